"""Model and schedule definitions shared by train / export / evaluate / fixtures."""
from diffusers import UNet2DModel

NUM_CLASSES = 10
NULL_CLASS = NUM_CLASSES  # last class-embedding index = "no class" (CFG)

# Training schedule: cosine ("squaredcos_cap_v2", Nichol & Dhariwal 2021). See README.md
# for why it is preferred over `linear` for 28x28 images.
SCHEDULE = dict(
    num_train_timesteps=1000,
    beta_schedule="squaredcos_cap_v2",
    prediction_type="epsilon",
    clip_sample=True,
    clip_sample_range=1.0,
)


def unet_config(num_classes=NUM_CLASSES):
    return dict(
        sample_size=28,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(32, 64, 128),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        mid_block_type="UNetMidBlock2D",
        norm_num_groups=8,
        attention_head_dim=32,
        num_class_embeds=num_classes + 1,
        time_embedding_type="positional",
        flip_sin_to_cos=True,
        freq_shift=0,
        resnet_time_scale_shift="default",
    )


def make_unet(num_classes=NUM_CLASSES):
    return UNet2DModel(**unet_config(num_classes))

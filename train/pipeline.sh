#!/bin/sh
# After training: export -> sample grid -> model card (no eval yet) -> evaluate (row by row,
# refreshing the model card and manifest after each row) -> final card + manifest.
#   sh pipeline.sh fashion          (run from train/, after train.py has finished)
# For fashion it also makes the fashion fixtures right after the export.
set -e
cd "$(dirname "$0")"
DS=$1
PY=${PY:-.venv/bin/python}
RUN=${RUN:-runs/$DS}
OUT=../www/models/$DS
NICE="nice -n 10"

$NICE $PY export.py --run $RUN --dataset $DS --out $OUT
$NICE $PY sample_grid.py --model $OUT --out $OUT/samples.png
$NICE $PY model_card.py --dataset $DS --run $RUN --model $OUT
$NICE $PY export.py --run $RUN --dataset $DS --out $OUT --manifest-only
if [ "$DS" = fashion ]; then
  $NICE $PY make_fixtures.py --part fashion
fi
for row in ddim20_w2 ddim20_w1 ddim20_w4 ddim50_w2 ddpm1000_w2; do
  $NICE $PY evaluate.py --dataset $DS --model $OUT --work $RUN --rows $row ${EVAL_ARGS:-}
  $NICE $PY model_card.py --dataset $DS --run $RUN --model $OUT
  $NICE $PY export.py --run $RUN --dataset $DS --out $OUT --manifest-only
done
echo pipeline done

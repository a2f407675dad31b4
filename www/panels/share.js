// The page's share panel: "Copy link" (the page's URL for the current settings and the
// chosen controls) and "Copy embed code" (the <diffusion-playground> tag for the same).

import { ALL_CONTROLS, WIDGET_CONTROLS, embedTag, settingsQuery } from "../settings.js";

export const SHARE_IDS = ["share-controls", "copy-link", "copy-embed", "embed-code", "share-note"];

export function shareHtml(pg) {
    if (!pg.o.share) return "";
    // Ticked at first: the controls the page's own link names, else the widget's default.
    const ticked = pg.o.shareControls ?? WIDGET_CONTROLS;
    const boxes = ALL_CONTROLS.map(
        (c) => `<label><input type="checkbox" value="${c}"${ticked.includes(c) ? " checked" : ""}> ${c}</label>`,
    ).join("");
    return `
<details class="dp-share">
  <summary>Share or embed these settings</summary>
  <fieldset id="share-controls"><legend>Controls the link and the embed show</legend>${boxes}</fieldset>
  <div class="dp-buttons">
    <button type="button" id="copy-link">Copy link</button>
    <button type="button" id="copy-embed">Copy embed code</button>
  </div>
  <label class="dp-sr" for="embed-code">Embed code</label>
  <textarea id="embed-code" rows="3" readonly spellcheck="false"></textarea>
  <p id="share-note" class="dp-help" aria-live="polite"></p>
</details>`;
}

/** The controls ticked in the share panel (in ALL_CONTROLS order). */
function chosen(pg) {
    return [...pg.el["share-controls"].querySelectorAll("input:checked")].map((b) => b.value);
}

/** The page's link for the current settings and the chosen controls. */
export function shareLink(pg) {
    const u = new URL(pg.o.pageUrl ?? location.href);
    u.search = `?${settingsQuery(pg.settings, chosen(pg), pg.runSampler())}`;
    u.hash = "";
    return u.href;
}

/** The widget tag for the current settings; widget.js is named by its absolute URL so the
 *  code works pasted anywhere. */
export function shareEmbed(pg) {
    return embedTag(pg.settings, chosen(pg), new URL("widget.js", pg.o.pageUrl ?? location.href).href, pg.runSampler());
}

async function copy(pg, text, what) {
    const note = pg.el["share-note"];
    pg.el["embed-code"].value = text;
    try {
        await navigator.clipboard.writeText(text);
        note.textContent = `${what} copied.`;
    } catch {
        // No clipboard permission (an iframe, an old browser): select it for Ctrl+C.
        pg.el["embed-code"].select();
        note.textContent = `${what} selected: press Ctrl+C (⌘C) to copy.`;
    }
}

export function wireShare(pg) {
    if (!pg.o.share) return;
    const e = pg.el;
    const refresh = () => (e["embed-code"].value = shareEmbed(pg));
    e["share-controls"].addEventListener("change", refresh);
    e["copy-link"].addEventListener("click", () => copy(pg, shareLink(pg), "Link"));
    e["copy-embed"].addEventListener("click", () => copy(pg, shareEmbed(pg), "Embed code"));
    pg.refreshShare = refresh;
    refresh();
}

// The model picker shared by the Playground tabs: name and description,
// narrowed to the models that declare a capability (metadata.capabilities).
import { html, useEffect, useState } from "../../vendor/htm-preact.js";
import { useStore } from "../store.js";
import { load, save } from "../util.js";

export function usePickable(capability, onlyCapable) {
  const models = useStore((s) => s.models);
  const listed = models.filter((m) => !m.unlisted);
  const declaring = listed.filter((m) => (m.capabilities || []).length);
  const narrowed = onlyCapable ? listed.filter((m) => (m.capabilities || []).includes(capability)) : listed;
  return { listed, narrowed, anyDeclared: declaring.length > 0 };
}

export function ModelPicker({ id, capability, value, onChange, only, setOnly, disabled }) {
  const ever = useStore((s) => s.everConnected);
  const { listed, narrowed, anyDeclared } = usePickable(capability, only);
  useEffect(() => {
    if (narrowed.length && !narrowed.find((m) => m.id === value || (m.aliases || []).includes(value))) onChange(narrowed[0].id);
  }, [narrowed.map((m) => m.id).join(","), value]);
  const current = listed.find((m) => m.id === value);
  const local = narrowed.filter((m) => !m.peerID);
  const peerIds = [...new Set(narrowed.filter((m) => m.peerID).map((m) => m.peerID))];
  return html`<div class="picker">
    <label for=${id}>Model</label>
    <select id=${id} value=${value} onChange=${(e) => onChange(e.target.value)} disabled=${disabled || !narrowed.length}>
      ${!ever && html`<option value="">Loading models…</option>`}
      ${ever && !narrowed.length && html`<option value="">${listed.length ? "No model declares “" + capability + "”" : "No models configured"}</option>`}
      <optgroup label="Local">${local.map((m) => html`<option value=${m.id}>${m.name && m.name !== m.id ? m.name + " (" + m.id + ")" : m.id}</option>`)}</optgroup>
      ${peerIds.map((p) => html`<optgroup label=${"Peer: " + p}>${narrowed.filter((m) => m.peerID === p).map((m) => html`<option value=${m.id}>${m.id}</option>`)}</optgroup>`)}
    </select>
    <label class="check small" title="Models declare capabilities under metadata.capabilities">
      <input type="checkbox" checked=${only} onChange=${(e) => setOnly(e.target.checked)} /> only “${capability}” models${anyDeclared ? "" : " (none declared)"}</label>
    ${current && current.description && html`<div class="muted small picker-desc">${current.description}</div>`}
  </div>`;
}

export function useOnly(key, capability) {
  const models = useStore((s) => s.models);
  const [stored, setStored] = useState(load("only-" + key, null));
  const auto = models.some((m) => (m.capabilities || []).includes(capability));
  const only = stored === null ? auto : stored;
  return [only, (v) => { save("only-" + key, v); setStored(v); }];
}

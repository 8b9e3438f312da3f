// Asking before an action that cannot be taken back: a modal <dialog>, one at a time.
import { html, useEffect, useRef, useState } from "./html.js";

// [the dialog to render (or null), ask({title, detail, confirm, onConfirm})].
export function useConfirm() {
  const [question, setQuestion] = useState(null);
  const dialog =
    question && html`<${ConfirmDialog} ...${question} onClose=${() => setQuestion(null)} />`;
  return [dialog, setQuestion];
}

function ConfirmDialog({ title, detail, confirm, onConfirm, onClose }) {
  const ref = useRef(null);
  useEffect(() => ref.current.showModal(), []);
  const yes = () => {
    onClose();
    onConfirm();
  };
  return html`
    <dialog ref=${ref} aria-labelledby="confirm-title" onClose=${onClose}>
      <h2 id="confirm-title">${title}</h2>
      <p>${detail}</p>
      <div class="buttons">
        <button type="button" onClick=${onClose}>Cancel</button>
        <button type="button" class="danger" onClick=${yes}>${confirm}</button>
      </div>
    </dialog>
  `;
}

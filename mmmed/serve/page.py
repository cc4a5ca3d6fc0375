"""The web page (Gradio): upload a patient's files, ask, see the picture, the answer and its sources.

The page calls the same :class:`~mmmed.serve.service.AnswerService` as the API, so its answers are the API's (and
predict.py's). Gradio stores an upload in its own temporary folder (``GRADIO_TEMP_DIR``, which serve.py points
inside the server's private folder) before the handler sees it: the handler reads each file and deletes it at
once, and ``delete_cache`` removes what a visitor uploaded and never asked about. Pictures go back inline (a data
URL), so no answer leaves a file behind. Gradio's multipart parser also leaves an empty placeholder file per upload
(no content: the data went to the copy the handler deletes); ``delete_cache`` removes those. Nothing is fetched
from the internet: no analytics, system fonts only.
"""

from __future__ import annotations

import html
import os
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

from mmmed.serve.batching import QueueFull
from mmmed.serve.service import AnswerService
from mmmed.serve.uploads import UploadError

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: it reads it then

import gradio as gr  # noqa: E402

SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]  # the default theme's Google font is a CDN request
MONO_FONTS = ["ui-monospace", "monospace"]


def page_theme() -> gr.themes.Base:
    """Gradio's default look with system fonts, so the page loads nothing from outside the server."""
    return gr.themes.Default(font=SYSTEM_FONTS, font_mono=MONO_FONTS)


def _take(paths: list[str] | None) -> list[tuple[str, bytes]]:
    """The uploaded files' names and bytes; each file is deleted from Gradio's folder as it is read."""
    files = []
    for path in paths or []:
        path = Path(path)
        try:
            files.append((path.name, path.read_bytes()))
        finally:
            path.unlink(missing_ok=True)
            try:
                path.parent.rmdir()  # Gradio puts each upload in a folder of its own
            except OSError:
                pass
    return files


def details_markdown(response: dict[str, Any]) -> str:
    """The rationale, option probabilities, sources and timings of an answer, as Markdown."""
    parts = []
    if response.get("reasoning"):
        parts.append(f"**Reasoning.** {response['reasoning']}")
    if response.get("options"):
        rows = "\n".join(f"| {html.escape(option)} | {score['prob']:.3f} |"
                         for option, score in sorted(response["options"].items(), key=lambda kv: -kv[1]["prob"]))
        parts.append(f"| option | probability |\n|---|---|\n{rows}")
    if response.get("samples"):
        entropies = ", ".join(f"{e:.2f}" for e in response.get("entropies", []))
        parts.append(f"**Samples** ({len(response['samples'])}; entropy per round, bits: {entropies}): "
                     + "; ".join(f"*{html.escape(s)}*" for s in response["samples"]))
    for n, passage in enumerate(response.get("passages") or [], start=1):
        heading = f" ({passage['heading']})" if passage.get("heading") else ""
        parts.append(f"[{n}] **{html.escape(passage['title'])}**{html.escape(heading)}: {html.escape(passage['source'])}"
                     f" ({passage['id']}, {passage['licence']})")
    timings = response["timings"]
    parts.append(f"<sub>{response['model']} · read {timings['read_s']:.2f} s · queued {timings['queue_s']:.2f} s · "
                 f"model {timings['model_s']:.2f} s</sub>")
    return "\n\n".join(parts)


def pictures_html(pictures: list[str]) -> str:
    """Inline ``<img>`` tags for base64 PNGs."""
    return "".join(f'<img src="data:image/png;base64,{picture}" alt="the uploaded file as the model saw it" '
                   f'style="max-width:100%">' for picture in pictures)


def build_page(service: AnswerService, concurrency: int, delete_after_s: int) -> gr.Blocks:
    """The page over ``service``: ``concurrency`` visitors' questions go to the batching queue at once."""
    card = service.model_card()
    trained = card["trained_questions"]
    modalities = ", ".join(f"{name} (`{m['tag']}`)" for name, m in card["modalities"].items())  # code: not an HTML tag

    def ask(paths: list[str] | None, question: str, options_text: str) -> tuple[str, str, str]:
        files = _take(paths)
        options = [line for line in (options_text or "").splitlines() if line.strip()] or None
        try:
            response = service.answer(files, question, options, picture=True)
        except (UploadError, QueueFull) as error:
            raise gr.Error(str(error), title="Cannot answer") from None
        except FutureTimeout:
            raise gr.Error(f"no answer within {service.timeout_s} s: the server is busy, try again", title="Timed out") from None
        return response["answer"] or "(no answer found)", details_markdown(response), pictures_html(response["pictures"])

    # delete_cache: every `frequency` s, what Gradio stored longer than `age` s ago goes (uploads never asked about)
    with gr.Blocks(title=f"mmmed · {card['model']}", analytics_enabled=False,
                   delete_cache=(delete_after_s, delete_after_s)) as page:
        gr.Markdown(f"## mmmed · {card['model']}\nReads: {modalities}. Files are deleted once answered; "
                    f"nothing from them is kept or logged. Not a medical device: research use only.")
        with gr.Row():
            with gr.Column():
                files = gr.File(label="Patient files (WFDB .hea + .dat, or a zip; DICOM; PNG)", file_count="multiple",
                                type="filepath", elem_id="files")
                question = gr.Textbox(label="Question", value=trained[0] if trained else "", lines=2,
                                      elem_id="question")
                if trained:
                    pick = gr.Dropdown(trained, label="Trained questions", value=trained[0], elem_id="trained")
                    pick.change(lambda chosen: chosen, pick, question)
                options = gr.Textbox(label="Answer options to score (optional, one per line)", lines=2,
                                     elem_id="options")
                button = gr.Button("Ask", variant="primary", elem_id="ask")
            with gr.Column():
                answer = gr.Textbox(label="Answer", interactive=False, elem_id="answer")
                details = gr.Markdown(elem_id="details")
                picture = gr.HTML(elem_id="picture")
        button.click(ask, [files, question, options], [answer, details, picture], concurrency_limit=concurrency,
                     api_name=False)
    return page


def mount_page(app, page: gr.Blocks, max_file_bytes: int):
    """Mount ``page`` at ``/`` of the FastAPI ``app``, with system fonts and Gradio's own upload limit."""
    return gr.mount_gradio_app(app, page, path="/", theme=page_theme(), max_file_size=max_file_bytes,
                               footer_links=[], show_error=True)

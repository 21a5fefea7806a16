"""Language model: a fake note summarizer routed to the `llm` queue."""

from __future__ import annotations

from typing import Any

from worker_stub.app import app
from worker_stub.tasks._fake import fake_count, fake_words

SUMMARIZE_NOTE = "worker.tasks.llm.summarize_note"


@app.task(name=SUMMARIZE_NOTE)  # type: ignore[untyped-decorator]  # celery ships no type hints
def summarize_note(note_id: str, max_words: int = 120) -> dict[str, Any]:
    """Return a deterministic fake summary of `note_id` of at most `max_words` words."""
    if max_words < 1:
        raise ValueError(f"max_words must be at least 1, got {max_words}")
    natural_length = fake_count(note_id, 8, 40)
    words = fake_words(note_id, min(natural_length, max_words))
    return {"note_id": note_id, "summary": " ".join(words), "words": len(words)}

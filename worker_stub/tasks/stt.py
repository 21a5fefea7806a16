"""Speech-to-text: a fake transcriber routed to the `stt` queue."""

from __future__ import annotations

import time
from typing import Any

from worker_stub.app import app
from worker_stub.tasks._fake import fake_count, fake_words

TRANSCRIBE = "worker.tasks.stt.transcribe"

# Long enough to show up as STARTED in the dashboard, short enough for tests.
_FAKE_LATENCY_SECONDS = 0.1


@app.task(name=TRANSCRIBE)  # type: ignore[untyped-decorator]  # celery ships no type hints
def transcribe(audio_url: str, language: str = "en") -> dict[str, Any]:
    """Return a deterministic fake transcript of `audio_url`; `words` is the word count."""
    time.sleep(_FAKE_LATENCY_SECONDS)
    seed = f"{audio_url}|{language}"
    words = fake_words(seed, fake_count(seed, 5, 25))
    text = " ".join(words).capitalize() + "."
    return {"audio_url": audio_url, "language": language, "text": text, "words": len(words)}

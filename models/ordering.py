"""The order in which an online learner sees questions (features) and answers (labels):
river's `stream.simulate_qa` order, kept for a live stream.

In river's progressive validation, before each question at time t every answer due by
t is revealed (in due order), then the question is asked; answers left at the end come
last. Live, answers and questions arrive interleaved in whatever order the pipeline
delivers them, so `QAOrder` buffers both: a question goes out once an answer later than
it has been seen (every answer due by then has arrived, since each source sends its
labels in time order), preceded by the buffered answers due by its time. `flush()`
releases everything (the end of a replay, or an idle stream). The release depends only
on the sequence of items added, so replaying the same training topic repeats it.

>>> qa = QAOrder()
>>> qa.add_question(0, "q0"); qa.add_question(10, "q1")
>>> qa.add_answer(5, "a0")
>>> list(qa.ready())
[('q', 0, 'q0')]
>>> qa.add_answer(15, "a1")
>>> list(qa.ready())
[('a', 5, 'a0'), ('q', 10, 'q1')]
>>> list(qa.flush())
[('a', 15, 'a1')]
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator
from typing import Any, Literal

__all__ = ["QAOrder", "Released"]

Released = tuple[Literal["q", "a"], int, Any]


class QAOrder:
    """Questions in arrival order, answers in due-time order, interleaved as river does.

    `max_buffer` bounds each buffer: past it the oldest question (or answer) is released
    without waiting, so a stream with no labels at all still moves, in bounded memory.
    """

    def __init__(self, max_buffer: int = 100_000) -> None:
        self.max_buffer = max_buffer
        self.questions: deque[tuple[int, Any]] = deque()
        self.answers: list[tuple[int, int, Any]] = []  # heap of (due, arrival, payload)
        self.latest_answer: int | None = None
        self.forced = 0  # releases that did not wait for their turn
        self._seq = 0

    def __len__(self) -> int:
        return len(self.questions) + len(self.answers)

    def add_question(self, t: int, payload: Any) -> None:
        self.questions.append((t, payload))

    def add_answer(self, due: int, payload: Any) -> None:
        heapq.heappush(self.answers, (due, self._seq, payload))
        self._seq += 1
        if self.latest_answer is None or due > self.latest_answer:
            self.latest_answer = due

    def ready(self) -> Iterator[Released]:
        """What can go out now, in order."""
        while self.questions:
            t = self.questions[0][0]
            waiting = self.latest_answer is None or self.latest_answer <= t
            if waiting and len(self.questions) <= self.max_buffer:
                break
            if waiting:
                self.forced += 1
            yield from self._answers_due(t)
            yield ("q", t, self.questions.popleft()[1])
        while len(self.answers) > self.max_buffer:
            self.forced += 1
            due, _, payload = heapq.heappop(self.answers)
            yield ("a", due, payload)

    def flush(self) -> Iterator[Released]:
        """Everything buffered, in order: each question after the answers due by it."""
        while self.questions:
            t, payload = self.questions.popleft()
            yield from self._answers_due(t)
            yield ("q", t, payload)
        while self.answers:
            due, _, payload = heapq.heappop(self.answers)
            yield ("a", due, payload)

    def _answers_due(self, t: int) -> Iterator[Released]:
        while self.answers and self.answers[0][0] <= t:
            due, _, payload = heapq.heappop(self.answers)
            yield ("a", due, payload)

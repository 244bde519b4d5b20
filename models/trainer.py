"""One online head fed in river's question/answer order, from questions and labels that
arrive in any interleaving: what the learn stage and replay run (no Kafka here).

>>> from models.head import HeadConfig
>>> trainer = Trainer(Head("demo", HeadConfig(spec="LogisticRegression")))
>>> trainer.label(10, "e0", 1.0)  # the label came first: it waits for its turn
>>> trainer.question(0, "e0", {"x": 1.0}); trainer.question(20, "e1", {"x": 1.0})
>>> trainer.step(), trainer.head.counts["asked"]  # e1 waits: a label due by 20 may come
([], 1)
>>> trainer.flush(), trainer.head.counts["asked"], trainer.head.updates
([], 2, 1)
"""

from __future__ import annotations

import copy
import pickle
import zlib
from collections import deque
from collections.abc import Iterable
from itertools import islice
from typing import Any

from models.head import Features, Head, Outcome, PackedFeatures
from models.ordering import QAOrder, Released

__all__ = ["Trainer"]


class Trainer:
    """A head and the order its questions and answers are released in; checkpointed
    whole (`checkpoint`, `restore`)."""

    def __init__(self, head: Head, max_buffer: int = 100_000) -> None:
        self.head = head
        self.order = QAOrder(max_buffer)
        self.names: tuple[str, ...] = ()  # the features of the questions, once seen
        self.more = False  # the last step stopped at its limit: more may be ready
        self._swept = -(1 << 62)  # stream time of the last horizon sweep

    def __getstate__(self) -> dict[str, Any]:
        """The trainer for pickling, its buffered questions packed (`PackedFeatures`)."""
        state = self.__dict__.copy()
        order = copy.copy(self.order)
        held = list(order.questions)
        order.questions = (  # type: ignore[assignment]  # unpacked by __setstate__
            [t for t, _ in held], [q[0] for _, q in held],
            PackedFeatures.pack([q[1] for _, q in held]), [q[2] for _, q in held])
        state["order"] = order
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        order = state["order"]
        if isinstance(order.questions, tuple):  # packed; older checkpoints hold the deque
            times, ids, xs, entities = order.questions
            order.questions = deque(zip(times, zip(ids, xs.unpack(), entities, strict=True),
                                        strict=True))
        self.__dict__.update(state)

    def question(self, t: int, event_id: str, x: Features, entity: str = "") -> None:
        self.order.add_question(t, (event_id, x, entity))

    def label(self, t: int, event_id: str, y: float, source: str = "outcome",
              where: Any = None, weight: int = 1) -> None:
        """A label due at `t`, learned `weight` times; `where` returns in the Outcome
        if it is rejected."""
        self.order.add_answer(t, (event_id, y, source, where, weight))

    def step(self, limit: int | None = None) -> list[Outcome]:
        """Feed the head what may go out now (at most `limit` items: `more` says whether
        some were left for the next call); what the stream must act on."""
        out, fed = self._feed(islice(self.order.ready(), limit))
        self.more = limit is not None and fed == limit
        return out

    def flush(self) -> list[Outcome]:
        """Feed the head everything buffered (the end of a stream, or an idle one)."""
        return self._feed(self.order.flush())[0]

    def _feed(self, released: Iterable[Released]) -> tuple[list[Outcome], int]:
        """Hand each released item to the head; its outcomes and how many there were."""
        out: list[Outcome] = []
        head = self.head
        fed = 0
        for kind, t, payload in released:
            fed += 1
            if kind == "q":
                event_id, x, entity = payload
                head.ask(event_id, t, x, entity, lazy=True)
                if head.held:
                    out += head.take()
            else:
                event_id, y, source, where, weight = payload
                out += head.answer(event_id, t, y, source, where, weight)
            if head.config.negative_window_ms or t - self._swept > head.config.horizon_ms // 8:
                out += head.advance(t)
                self._swept = t
        return out, fed

    def checkpoint(self) -> bytes:
        return zlib.compress(pickle.dumps(self, protocol=5), 1)

    @staticmethod
    def restore(raw: bytes) -> Trainer:
        got: Any = pickle.loads(zlib.decompress(raw))
        if not isinstance(got, Trainer):
            raise TypeError(f"not a Trainer checkpoint: {type(got).__name__}")
        return got

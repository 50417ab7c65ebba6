"""Textual messages that carry engine events to the screen that subscribed to them.

Each message wraps one immutable engine event and is named after it; handlers are
`on_engine_<event>` (for example `on_engine_gpu_sampled`). Readings that supersede each other
(GPU, host, a model list, a progress figure) replace a queued older one, so a busy screen draws
only the newest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from textual.message import Message

from fabstir_tui.engine import events as ev
from fabstir_tui.engine.chain import events as cev
from fabstir_tui.engine.jobs import views as jv

E = TypeVar("E", bound=ev.Event)


class EngineMessage(Message, Generic[E], bubble=False, namespace="engine"):
    """Base of every bridged event; it stays on the screen it was posted to."""

    def __init__(self, event: E) -> None:
        super().__init__()
        self.event = event


class GpuSampled(EngineMessage[ev.GpuSampled], bubble=False, namespace="engine"):
    def can_replace(self, message: Message) -> bool:
        return isinstance(message, GpuSampled)


class HostSampled(EngineMessage[ev.HostSampled], bubble=False, namespace="engine"):
    def can_replace(self, message: Message) -> bool:
        return isinstance(message, HostSampled)


class ModelsScanned(EngineMessage[ev.ModelsScanned], bubble=False, namespace="engine"):
    def can_replace(self, message: Message) -> bool:
        return isinstance(message, ModelsScanned)


class ModelHashProgress(EngineMessage[ev.ModelHashProgress], bubble=False, namespace="engine"):
    def can_replace(self, message: Message) -> bool:
        return isinstance(message, ModelHashProgress) and message.event.path == self.event.path


class ModelHashed(EngineMessage[ev.ModelHashed], bubble=False, namespace="engine"):
    pass


class ModelLoadProgress(EngineMessage[ev.ModelLoadProgress], bubble=False, namespace="engine"):
    def can_replace(self, message: Message) -> bool:
        return isinstance(message, ModelLoadProgress) and message.event.path == self.event.path


class ModelLoaded(EngineMessage[ev.ModelLoaded], bubble=False, namespace="engine"):
    pass


class ModelLoadFailed(EngineMessage[ev.ModelLoadFailed], bubble=False, namespace="engine"):
    pass


class ModelUnloaded(EngineMessage[ev.ModelUnloaded], bubble=False, namespace="engine"):
    pass


class ModelWorkerDied(EngineMessage[ev.ModelWorkerDied], bubble=False, namespace="engine"):
    pass


class GenerationStarted(EngineMessage[ev.GenerationStarted], bubble=False, namespace="engine"):
    pass


class GenerationFinished(EngineMessage[ev.GenerationFinished], bubble=False, namespace="engine"):
    pass


class GenerationFailed(EngineMessage[ev.GenerationFailed], bubble=False, namespace="engine"):
    pass


class LogRecorded(EngineMessage[ev.LogRecorded], bubble=False, namespace="engine"):
    pass


class OperatorActionRecorded(
    EngineMessage[ev.OperatorActionRecorded], bubble=False, namespace="engine"
):
    pass


class NodeStateChanged(EngineMessage[ev.NodeStateChanged], bubble=False, namespace="engine"):
    pass


class ChainStatus(EngineMessage[cev.ChainStatus], bubble=False, namespace="engine"):
    def can_replace(self, message: Message) -> bool:
        return isinstance(message, ChainStatus)


class PeersChanged(EngineMessage[ev.PeersChanged], bubble=False, namespace="engine"):
    def can_replace(self, message: Message) -> bool:
        return isinstance(message, PeersChanged)


class TxSubmitted(EngineMessage[cev.TxSubmitted], bubble=False, namespace="engine"):
    pass


class TxSettled(EngineMessage[cev.TxSettled], bubble=False, namespace="engine"):
    pass


class JobsChanged(EngineMessage[jv.JobsChanged], bubble=False, namespace="engine"):
    def can_replace(self, message: Message) -> bool:
        return isinstance(message, JobsChanged)


_MESSAGES: dict[type[ev.Event], Callable[[Any], EngineMessage[Any]]] = {
    ev.GpuSampled: GpuSampled,
    ev.HostSampled: HostSampled,
    ev.ModelsScanned: ModelsScanned,
    ev.ModelHashProgress: ModelHashProgress,
    ev.ModelHashed: ModelHashed,
    ev.ModelLoadProgress: ModelLoadProgress,
    ev.ModelLoaded: ModelLoaded,
    ev.ModelLoadFailed: ModelLoadFailed,
    ev.ModelUnloaded: ModelUnloaded,
    ev.ModelWorkerDied: ModelWorkerDied,
    ev.GenerationStarted: GenerationStarted,
    ev.GenerationFinished: GenerationFinished,
    ev.GenerationFailed: GenerationFailed,
    ev.LogRecorded: LogRecorded,
    ev.OperatorActionRecorded: OperatorActionRecorded,
    ev.NodeStateChanged: NodeStateChanged,
    cev.ChainStatus: ChainStatus,
    ev.PeersChanged: PeersChanged,
    cev.TxSubmitted: TxSubmitted,
    cev.TxSettled: TxSettled,
    jv.JobsChanged: JobsChanged,
}


def message_for(event: ev.Event) -> EngineMessage[Any] | None:
    """The message that carries `event`, or None for an event the UI does not draw."""
    make = _MESSAGES.get(type(event))
    return make(event) if make is not None else None

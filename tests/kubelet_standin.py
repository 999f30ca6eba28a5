"""A kubelet stand-in speaking the real device plugin API v1beta1 over real unix sockets.

It runs on grpcio's *synchronous* API in its own threads, so trio tests (and the daemon,
whose gRPC is its own, on h2) never share an event loop with it. Blocking calls are
meant to be wrapped by trio code in ``trio.to_thread.run_sync`` (see :func:`blocking`).

API
---
``KubeletStandin(plugin_dir, *, auto_watch=False, start=True)``
    Serves ``Registration`` on ``<plugin_dir>/kubelet.sock`` (``start()``/``stop()``, or
    use it as a context manager). With ``auto_watch`` it behaves like kubelet: on every
    registration it dials the plugin's endpoint and opens a ListAndWatch stream, kept in
    ``watches[resource]`` (the newest one).
``.registrations``: list of :class:`Registration` (version, endpoint, resource_name,
    options, ``t_ns`` = ``time.perf_counter_ns()`` when kubelet got it), in arrival order.
``.wait_registration(resource, *, count=1, timeout=5) -> Registration``
    Blocks until ``resource`` has registered ``count`` times in total; returns the newest.
``.reject(n, code=UNAVAILABLE)``: refuse the next ``n`` Register calls (for retry tests).
``.hang(n)``: the next ``n`` Register calls never answer (a hung kubelet) until ``stop()``;
    ``.hung`` counts the calls hanging right now.
``.watch(resource) -> Watch``: dial the plugin and consume ListAndWatch in a thread.
``Watch.lists``: list of :class:`DeviceList` (``t_ns`` receive time, ``devices`` as a
    tuple of ``(id, health)``); ``Watch.wait_for(pred, timeout)`` blocks until
    ``pred(latest DeviceList)`` holds and returns that list; ``Watch.wait_count(n)``;
    ``Watch.close()`` drops the client (the plugin must notice and end the stream);
    ``Watch.ended`` (threading.Event) and ``Watch.end_code`` tell how the stream ended.
``.options(resource)``, ``.allocate(resource, [ids], [ids], ...)``,
``.preferred(resource, available, must_include=(), size=1)``, ``.prestart(resource, ids)``
    Unary calls on the plugin's socket; errors raise ``grpc.RpcError`` (``.code()``).
``KubeletStandin(..., pod_resources=PATH)`` also serves PodResources v1 ``List`` on PATH;
    ``.assign(resource, ids, pod=, namespace=, container=)`` / ``.release(pod=, namespace=)``
    set what it reports (``allocate`` alone does not: kubelet assigns when a pod starts).
``.restart() -> int``: simulate a kubelet restart: stop serving and drop every stream,
    delete every socket in the plugin dir, serve ``kubelet.sock`` again; returns the
    ``perf_counter_ns`` just after the new ``kubelet.sock`` exists.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent import futures
from typing import Any, Optional

import attrs
import grpc

from devplug.kubelet import api_pb2, api_pb2_grpc, podresources_pb2, podresources_pb2_grpc
from devplug.kubelet import KUBELET_SOCKET, socket_name

__all__ = ["DeviceList", "KubeletStandin", "Registration", "Watch", "blocking"]


async def blocking(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a blocking stand-in call from trio without blocking the trio loop."""
    import functools

    import trio

    return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), abandon_on_cancel=True)


@attrs.frozen
class Registration:
    version: str
    endpoint: str
    resource_name: str
    pre_start_required: bool
    get_preferred_allocation_available: bool
    t_ns: int


@attrs.frozen
class DeviceList:
    t_ns: int
    devices: tuple[tuple[str, str], ...]

    @property
    def ids(self) -> list[str]:
        return [i for i, _ in self.devices]

    def as_dict(self) -> dict[str, str]:
        return dict(self.devices)


class Watch:
    """One ListAndWatch stream consumed by a thread, like kubelet's endpoint goroutine."""

    def __init__(self, socket_path: str, resource: str) -> None:
        self.resource = resource
        self.lists: list[DeviceList] = []
        self.ended = threading.Event()
        self.end_code: Optional[grpc.StatusCode] = None
        self._cond = threading.Condition()
        self._channel = grpc.insecure_channel("unix://" + socket_path)
        stub = api_pb2_grpc.DevicePluginStub(self._channel)
        self._call = stub.ListAndWatch(api_pb2.Empty())
        self._thread = threading.Thread(target=self._consume, name=f"watch-{resource}", daemon=True)
        self._thread.start()

    def _consume(self) -> None:
        try:
            for response in self._call:
                t = time.perf_counter_ns()
                lst = DeviceList(t, tuple((d.ID, d.health) for d in response.devices))
                with self._cond:
                    self.lists.append(lst)
                    self._cond.notify_all()
            self.end_code = grpc.StatusCode.OK
        except grpc.RpcError as e:
            self.end_code = e.code()
        finally:
            with self._cond:
                self.ended.set()
                self._cond.notify_all()

    @property
    def latest(self) -> Optional[DeviceList]:
        with self._cond:
            return self.lists[-1] if self.lists else None

    def wait_for(self, pred: Callable[[DeviceList], bool], timeout: float = 5.0) -> DeviceList:
        """Block until the newest list satisfies ``pred``; returns it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if self.lists and pred(self.lists[-1]):
                    return self.lists[-1]
                left = deadline - time.monotonic()
                if left <= 0 or self.ended.is_set():
                    raise TimeoutError(
                        f"{self.resource}: no matching list (latest {self.latest}, ended={self.ended.is_set()})"
                    )
                self._cond.wait(left)

    def wait_count(self, n: int, timeout: float = 5.0) -> list[DeviceList]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.lists) < n:
                left = deadline - time.monotonic()
                if left <= 0 or self.ended.is_set():
                    raise TimeoutError(f"{self.resource}: {len(self.lists)} lists, wanted {n}")
                self._cond.wait(left)
            return list(self.lists)

    def wait_ended(self, timeout: float = 5.0) -> Optional[grpc.StatusCode]:
        if not self.ended.wait(timeout):
            raise TimeoutError(f"{self.resource}: stream did not end")
        return self.end_code

    def close(self) -> None:
        """Go away like a dead kubelet: cancel the call and close the connection."""
        self._call.cancel()
        self._channel.close()
        self._thread.join(5)


class _RegistrationServicer(api_pb2_grpc.RegistrationServicer):
    def __init__(self, owner: KubeletStandin) -> None:
        self._owner = owner

    def Register(self, request, context):  # noqa: N802
        return self._owner._on_register(request, context)


class _PodResourcesServicer(podresources_pb2_grpc.PodResourcesListerServicer):
    def __init__(self, owner: KubeletStandin) -> None:
        self._owner = owner

    def List(self, request, context):  # noqa: N802
        return self._owner._list_pod_resources()


class KubeletStandin:
    def __init__(self, plugin_dir: str, *, auto_watch: bool = False, start: bool = True,
                 pod_resources: Optional[str] = None) -> None:
        self.plugin_dir = os.path.abspath(plugin_dir)
        self.socket = os.path.join(self.plugin_dir, KUBELET_SOCKET)
        self.auto_watch = auto_watch
        self.registrations: list[Registration] = []
        self.watches: dict[str, Watch] = {}
        self._all_watches: list[Watch] = []
        self._cond = threading.Condition()
        self._rejects: list[grpc.StatusCode] = []
        self._hangs = 0
        self.hung = 0
        self._release = threading.Event()
        self._server: Optional[grpc.Server] = None
        self._channels: dict[str, grpc.Channel] = {}
        self.pod_resources = pod_resources
        self._assigned: dict[tuple[str, str, str], dict[str, list[str]]] = {}  # (ns, pod, container)
        self._pr_server: Optional[grpc.Server] = None
        if start:
            self.start()

    # ---- kubelet's Registration service ---------------------------------------------------
    def start(self) -> None:
        os.makedirs(self.plugin_dir, exist_ok=True)
        self._release.clear()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        api_pb2_grpc.add_RegistrationServicer_to_server(_RegistrationServicer(self), server)
        server.add_insecure_port("unix://" + self.socket)
        server.start()
        self._server = server
        if self.pod_resources is not None and self._pr_server is None:
            pr = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
            podresources_pb2_grpc.add_PodResourcesListerServicer_to_server(_PodResourcesServicer(self), pr)
            pr.add_insecure_port("unix://" + self.pod_resources)
            pr.start()
            self._pr_server = pr

    def stop(self) -> None:
        """Stop like a dying kubelet: no more Registration, every stream and channel dropped."""
        self._release.set()
        for w in self._all_watches:
            w.close()
        self._all_watches.clear()
        self.watches.clear()
        for ch in self._channels.values():
            ch.close()
        self._channels.clear()
        if self._server is not None:
            self._server.stop(None).wait()
            self._server = None
        if self._pr_server is not None:
            self._pr_server.stop(None).wait()
            self._pr_server = None

    def restart(self) -> int:
        self.stop()
        # kubelet's device manager removes everything in its socket directory on start.
        for name in os.listdir(self.plugin_dir):
            path = os.path.join(self.plugin_dir, name)
            try:
                if stat.S_ISSOCK(os.lstat(path).st_mode):
                    os.unlink(path)
            except FileNotFoundError:
                pass
        self.start()
        return time.perf_counter_ns()

    def __enter__(self) -> KubeletStandin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reject(self, n: int, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None:
        with self._cond:
            self._rejects.extend([code] * n)

    def hang(self, n: int) -> None:
        with self._cond:
            self._hangs += n

    def _on_register(self, request, context):
        t = time.perf_counter_ns()
        with self._cond:
            hang = self._hangs > 0
            if hang:
                self._hangs -= 1
                self.hung += 1
                self._cond.notify_all()
        if hang:
            self._release.wait()
            with self._cond:
                self.hung -= 1
            context.abort(grpc.StatusCode.UNAVAILABLE, "stand-in hung, then stopped")
        with self._cond:
            if self._rejects:
                code = self._rejects.pop(0)
                context.abort(code, "stand-in told to refuse")
            reg = Registration(
                version=request.version,
                endpoint=request.endpoint,
                resource_name=request.resource_name,
                pre_start_required=request.options.pre_start_required,
                get_preferred_allocation_available=request.options.get_preferred_allocation_available,
                t_ns=t,
            )
            self.registrations.append(reg)
            self._cond.notify_all()
        if self.auto_watch:
            # kubelet answers first and dials the plugin afterwards.
            threading.Thread(target=self._auto_watch, args=(reg,), daemon=True).start()
        return api_pb2.Empty()

    def _auto_watch(self, reg: Registration) -> None:
        w = Watch(os.path.join(self.plugin_dir, reg.endpoint), reg.resource_name)
        with self._cond:
            self._all_watches.append(w)
            self.watches[reg.resource_name] = w
            self._cond.notify_all()

    def wait_hung(self, n: int = 1, timeout: float = 5.0) -> None:
        """Block until ``n`` Register calls hang here."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.hung < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self.hung} Register calls hanging, wanted {n}")
                self._cond.wait(left)

    def assign(self, resource: str, ids: Sequence[str], *, pod: str, namespace: str = "default",
               container: str = "main") -> None:
        with self._cond:
            self._assigned.setdefault((namespace, pod, container), {}).setdefault(resource, []).extend(ids)

    def release(self, *, pod: str, namespace: str = "default") -> None:
        with self._cond:
            for key in [k for k in self._assigned if k[:2] == (namespace, pod)]:
                del self._assigned[key]

    def _list_pod_resources(self) -> podresources_pb2.ListPodResourcesResponse:
        with self._cond:
            pods: dict[tuple[str, str], list] = {}
            for (ns, pod, container), devices in sorted(self._assigned.items()):
                pods.setdefault((ns, pod), []).append(podresources_pb2.ContainerResources(
                    name=container,
                    devices=[podresources_pb2.ContainerDevices(resource_name=r, device_ids=ids)
                             for r, ids in sorted(devices.items())]))
        return podresources_pb2.ListPodResourcesResponse(pod_resources=[
            podresources_pb2.PodResources(namespace=ns, name=pod, containers=containers)
            for (ns, pod), containers in pods.items()])

    def registrations_of(self, resource: str) -> list[Registration]:
        with self._cond:
            return [r for r in self.registrations if r.resource_name == resource]

    def wait_registration(self, resource: str, *, count: int = 1, timeout: float = 5.0) -> Registration:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                regs = [r for r in self.registrations if r.resource_name == resource]
                if len(regs) >= count:
                    return regs[-1]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{resource}: {len(regs)} registrations, wanted {count}")
                self._cond.wait(left)

    def wait_watch(self, resource: str, *, not_before: Optional[Watch] = None, timeout: float = 5.0) -> Watch:
        """With ``auto_watch``: the stream kubelet opened after registration (a new one)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                w = self.watches.get(resource)
                if w is not None and w is not not_before:
                    return w
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{resource}: no ListAndWatch stream")
                self._cond.wait(left)

    # ---- calls kubelet makes on a plugin ------------------------------------------------------
    def endpoint(self, resource: str) -> str:
        regs = self.registrations_of(resource)
        name = regs[-1].endpoint if regs else socket_name(resource)
        return os.path.join(self.plugin_dir, name)

    def stub(self, resource: str) -> api_pb2_grpc.DevicePluginStub:
        path = self.endpoint(resource)
        ch = self._channels.get(path)
        if ch is None:
            ch = self._channels[path] = grpc.insecure_channel("unix://" + path)
        return api_pb2_grpc.DevicePluginStub(ch)

    def watch(self, resource: str) -> Watch:
        w = Watch(self.endpoint(resource), resource)
        with self._cond:
            self._all_watches.append(w)
        return w

    def options(self, resource: str, timeout: float = 5.0) -> api_pb2.DevicePluginOptions:
        return self.stub(resource).GetDevicePluginOptions(api_pb2.Empty(), timeout=timeout)

    def allocate(self, resource: str, *containers: Sequence[str], timeout: float = 5.0) -> api_pb2.AllocateResponse:
        request = api_pb2.AllocateRequest(
            container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=list(c)) for c in containers]
        )
        return self.stub(resource).Allocate(request, timeout=timeout)

    def preferred(
        self,
        resource: str,
        available: Iterable[str],
        must_include: Iterable[str] = (),
        size: int = 1,
        timeout: float = 5.0,
    ) -> list[str]:
        request = api_pb2.PreferredAllocationRequest(
            container_requests=[
                api_pb2.ContainerPreferredAllocationRequest(
                    available_deviceIDs=list(available),
                    must_include_deviceIDs=list(must_include),
                    allocation_size=size,
                )
            ]
        )
        response = self.stub(resource).GetPreferredAllocation(request, timeout=timeout)
        return list(response.container_responses[0].deviceIDs)

    def prestart(self, resource: str, ids: Iterable[str], timeout: float = 5.0) -> None:
        self.stub(resource).PreStartContainer(
            api_pb2.PreStartContainerRequest(devices_ids=list(ids)), timeout=timeout
        )


def main(argv: Optional[list[str]] = None) -> None:
    """``python tests/kubelet_standin.py PLUGIN_DIR``: a kubelet stand-in in its own process.

    It serves Registration, opens ListAndWatch on every registration (like kubelet) and
    prints one JSON line per event on stdout: ``{"event": "register", ...}`` and
    ``{"event": "list", "resource": ..., "t_ns": ..., "devices": [[id, health], ...]}``, and
    ``{"event": "end", "resource": ..., "code": "OK" | <grpc.StatusCode name>}`` when a stream ends.
    ``t_ns`` is ``time.perf_counter_ns()`` (CLOCK_MONOTONIC, comparable across processes).
    Reads commands on stdin, one a line: ``restart``, ``quit``, ``clock`` (prints the clock
    now, to check it against the reader's) and ``watch RESOURCE SOCKET`` (ListAndWatch on a
    socket without a registration, its lists printed under RESOURCE). bench/gokubelet is the
    same protocol in Go.
    """
    import argparse
    import json
    import sys

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("plugin_dir")
    args = parser.parse_args(argv)
    out_lock = threading.Lock()

    def emit(obj: dict[str, Any]) -> None:
        with out_lock:
            sys.stdout.write(json.dumps(obj) + "\n")
            sys.stdout.flush()

    class _Printing(KubeletStandin):
        def _on_register(self, request, context):
            response = super()._on_register(request, context)
            emit({"event": "register", "resource": request.resource_name, "endpoint": request.endpoint,
                  "t_ns": time.perf_counter_ns()})
            return response

        def _auto_watch(self, reg: Registration) -> None:
            stream(reg.resource_name, os.path.join(self.plugin_dir, reg.endpoint))

    def stream(resource: str, path: str) -> None:
        channel = grpc.insecure_channel("unix://" + path)
        call = api_pb2_grpc.DevicePluginStub(channel).ListAndWatch(api_pb2.Empty())
        try:
            for response in call:
                t = time.perf_counter_ns()
                emit({"event": "list", "resource": resource, "t_ns": t,
                      "devices": [[d.ID, d.health] for d in response.devices]})
            emit({"event": "end", "resource": resource, "code": "OK"})
        except grpc.RpcError as e:
            emit({"event": "end", "resource": resource, "code": e.code().name})

    kubelet = _Printing(args.plugin_dir, auto_watch=True)
    emit({"event": "ready", "socket": kubelet.socket})
    try:
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "restart":
                emit({"event": "restarted", "t_ns": kubelet.restart()})
            elif cmd == "clock":
                emit({"event": "clock", "t_ns": time.perf_counter_ns()})
            elif cmd.startswith("watch ") and len(cmd.split()) == 3:
                threading.Thread(target=stream, args=cmd.split()[1:], daemon=True).start()
            elif cmd == "quit":
                break
    finally:
        kubelet.stop()


if __name__ == "__main__":
    main()

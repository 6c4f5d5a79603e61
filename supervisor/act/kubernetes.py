"""Kubernetes: cordon and taint a bad node, evict the job's pods from it, restart a JobSet or a
PyTorchJob, suspend it to halt. Uses the official `kubernetes` client.

Three small parts:
- `KubeApi`: the eight API calls ftsup makes, typed, each with a request timeout, retried with
  jitter within a budget (`RetryPolicy`), returning plain JSON-shaped dicts. Patch content types
  are explicit: nodes use `application/strategic-merge-patch+json` (as `kubectl cordon` does),
  custom objects `application/merge-patch+json` (CRDs do not support strategic merge).
- `KubeNodeRemediator` (NodeRemediator): CORDON = `spec.unschedulable: true` + taint
  `ftsup.io/unhealthy=<rule>:NoSchedule` + annotation `ftsup.io/cordoned=<key>`; UNCORDON undoes
  only what ftsup did: a node an operator cordoned keeps its cordon (ftsup removes its own taint
  only). Every node patch carries the resourceVersion read just before, so a concurrent change
  fails the patch (409) and the read-modify-write is done again, never overwritten.
- `KubernetesActuator` (Actuator): the job is a JobSet (`jobset.x-k8s.io/v1alpha2`) or a
  PyTorchJob (`kubeflow.org/v1`) whose pods carry a label selector.
    restart:            `restart: delete-pods` deletes the job's pods (the controllers recreate
                        them; the trainer resumes from its checkpoint), or `restart: suspend`
                        suspends the object, waits for its pods to go and resumes it.
    cordon_and_restart: the node must run (or have run) a pod of the job; cordon + taint it,
                        evict (policy/v1 Eviction; a PodDisruptionBudget refusal falls back to
                        delete) or delete the job's pods on it, then restart.
    halt:               suspend the object and mark it `ftsup.io/halted`; `clear_halt` resumes it.
  The attempt number, launch time and the last action's idempotency key live in annotations on
  the job object itself (`ftsup.io/attempt`, `ftsup.io/launched-at`, `ftsup.io/last-action`): a
  restarted daemon reads them back, and an action whose key is already there is a no-op.

Node identity: a Kubernetes node name, or an EC2 instance id found in the node's providerID
(`aws:///us-east-1a/i-0123456789abcdef0`). For ftsup's node names (CloudWatch streams) to be
Kubernetes node names, run the node agent with `--node "$NODE_NAME"` from the downward API
(`fieldRef: spec.nodeName`).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import structlog
import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from supervisor.act.base import apply_once
from supervisor.act.remediate import (
    NodeFault,
    NodeHealth,
    NodeOp,
    Outcome,
    RemediationRequest,
    RemediationResult,
    RetryPolicy,
    SettingsReader,
    retry_call,
)
from supervisor.errors import StartupError
from supervisor.vocabulary import Action, ActionResult, JobObservation, Verdict

__all__ = [
    "ANN_ATTEMPT",
    "ANN_CORDONED",
    "ANN_HALTED",
    "ANN_LAST_ACTION",
    "ANN_LAUNCHED_AT",
    "JOB_KINDS",
    "JobKind",
    "KubeApi",
    "KubeJobSpec",
    "KubeNodeRemediator",
    "KubernetesActuator",
    "check_settings",
    "connect",
    "from_settings",
    "is_retryable",
]

log = structlog.get_logger(__name__)

STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"

ANN_CORDONED = "ftsup.io/cordoned"
ANN_ATTEMPT = "ftsup.io/attempt"
ANN_LAUNCHED_AT = "ftsup.io/launched-at"
ANN_LAST_ACTION = "ftsup.io/last-action"
ANN_HALTED = "ftsup.io/halted"
DEFAULT_TAINT = "ftsup.io/unhealthy"

_INSTANCE_ID = re.compile(r"(?<![0-9a-z])i-[0-9a-f]{8}(?:[0-9a-f]{9})?(?![0-9a-z])")
_LABEL_VALUE_BAD = re.compile(r"[^A-Za-z0-9._-]+")
_TERMINAL = ("Succeeded", "Failed")
# A node name ftsup puts into a field selector (`spec.nodeName=<node>`): a Kubernetes node name or a
# stream name of one; nothing the selector syntax reads as an operator (`,` `=` `!` `\\`) or space.
_SELECTOR_NODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,252}")


def _label_value(text: str) -> str:
    """`text` as a valid label / taint value: at most 63 of [A-Za-z0-9._-], alphanumeric at both ends."""
    value = _LABEL_VALUE_BAD.sub("-", text)[:63].strip("-._")
    return value or "fault"


# ----------------------------------------------------------------------------- the API, typed


def is_retryable(exc: BaseException) -> bool:
    """Transient: HTTP 429 (except from an eviction, handled by the caller), 5xx, and connection
    or timeout errors below the client. Final: every other status, and status 0 (the client
    could not build the request, or TLS failed)."""
    if isinstance(exc, ApiException):
        status = exc.status or 0
        return status == 429 or status >= 500
    return isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError)


@dataclass(frozen=True, slots=True)
class CustomRef:
    """A namespaced custom object."""

    group: str
    version: str
    plural: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.plural}.{self.group}/{self.version} {self.namespace}/{self.name}"


class KubeApi:
    """The calls ftsup makes, on an official-client `ApiClient`. Thread-safe (the client's pool is).

    Every call has `_request_timeout=(connect_timeout_s, read_timeout_s)` and is retried while
    `is_retryable` within `retry`. Results are plain dicts in the API's JSON shape (camelCase),
    made by the client's own models and serializer, so a response that does not fit the model
    fails here rather than deeper in ftsup. 404 answers are None / False where documented.
    """

    def __init__(
        self,
        api_client: Any,
        *,
        connect_timeout_s: float = 3.0,
        read_timeout_s: float = 10.0,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.api_client = api_client
        self.core = k8s.CoreV1Api(api_client)
        self.custom = k8s.CustomObjectsApi(api_client)
        self.timeout = (connect_timeout_s, read_timeout_s)
        self.retry = retry if retry is not None else RetryPolicy()
        self.sleep = sleep

    def _call(self, fn: Callable[[], Any]) -> Any:
        return retry_call(fn, self.retry, retryable=is_retryable, sleep=self.sleep)

    def _json(self, model: Any) -> dict[str, Any]:
        return cast("dict[str, Any]", self.api_client.sanitize_for_serialization(model))

    def get_node(self, name: str) -> dict[str, Any] | None:
        """GET /api/v1/nodes/{name}; None when it does not exist."""
        try:
            return self._json(self._call(lambda: self.core.read_node(name, _request_timeout=self.timeout)))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list_nodes(
        self, *, field_selector: str | None = None, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        """GET /api/v1/nodes (one page of up to 5000 nodes)."""
        result = self._call(
            lambda: self.core.list_node(
                field_selector=field_selector,
                label_selector=label_selector,
                limit=5000,
                _request_timeout=self.timeout,
            )
        )
        return [self._json(item) for item in result.items or []]

    def patch_node(self, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """PATCH /api/v1/nodes/{name} as a strategic merge patch (not retried on 409: the caller re-reads)."""
        return self._json(
            self._call(
                lambda: self.core.patch_node(
                    name, dict(body), _content_type=STRATEGIC, _request_timeout=self.timeout
                )
            )
        )

    def list_pods(
        self, namespace: str, label_selector: str, *, field_selector: str | None = None
    ) -> list[dict[str, Any]]:
        """GET /api/v1/namespaces/{ns}/pods?labelSelector=...[&fieldSelector=...]."""
        result = self._call(
            lambda: self.core.list_namespaced_pod(
                namespace,
                label_selector=label_selector,
                field_selector=field_selector,
                _request_timeout=self.timeout,
            )
        )
        return [self._json(item) for item in result.items or []]

    def evict_pod(
        self, namespace: str, name: str, grace_period_s: int
    ) -> Literal["evicted", "gone", "blocked"]:
        """POST .../pods/{name}/eviction (policy/v1). "blocked": a PodDisruptionBudget said 429."""
        body = k8s.V1Eviction(
            api_version="policy/v1",
            kind="Eviction",
            metadata=k8s.V1ObjectMeta(name=name, namespace=namespace),
            delete_options=k8s.V1DeleteOptions(grace_period_seconds=grace_period_s),
        )
        try:
            # The server answers with a Status, not an Eviction: only the HTTP status matters here.
            # With _preload_content=False the call returns the raw urllib3 response, not a V1Eviction.
            response: Any = retry_call(
                lambda: self.core.create_namespaced_pod_eviction(
                    name,
                    namespace,
                    body,
                    # The generated call sends no Content-Type for this operation (and ignores
                    # _content_type): say what the body is.
                    _headers={"Content-Type": "application/json"},
                    _preload_content=False,
                    _request_timeout=self.timeout,
                ),
                self.retry,
                retryable=lambda exc: is_retryable(exc) and getattr(exc, "status", None) != 429,
                sleep=self.sleep,
            )
            response.release_conn()
        except ApiException as exc:
            if exc.status == 404:
                return "gone"
            if exc.status == 429:
                return "blocked"
            raise
        return "evicted"

    def delete_pod(self, namespace: str, name: str, grace_period_s: int) -> bool:
        """DELETE .../pods/{name}; False when it was already gone."""
        try:
            response = self._call(
                lambda: self.core.delete_namespaced_pod(
                    name,
                    namespace,
                    grace_period_seconds=grace_period_s,
                    _preload_content=False,
                    _request_timeout=self.timeout,
                )
            )
            response.release_conn()
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def get_custom(self, ref: CustomRef) -> dict[str, Any] | None:
        """GET /apis/{group}/{version}/namespaces/{ns}/{plural}/{name}; None when it does not exist."""
        try:
            return cast(
                "dict[str, Any]",
                self._call(
                    lambda: self.custom.get_namespaced_custom_object(
                        ref.group,
                        ref.version,
                        ref.namespace,
                        ref.plural,
                        ref.name,
                        _request_timeout=self.timeout,
                    )
                ),
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def patch_custom(self, ref: CustomRef, body: Mapping[str, Any]) -> dict[str, Any]:
        """PATCH the custom object as a JSON merge patch (null deletes a key)."""
        return cast(
            "dict[str, Any]",
            self._call(
                lambda: self.custom.patch_namespaced_custom_object(
                    ref.group,
                    ref.version,
                    ref.namespace,
                    ref.plural,
                    ref.name,
                    dict(body),
                    _content_type=MERGE,
                    _request_timeout=self.timeout,
                )
            ),
        )


# The config loaders carry no annotations: typed aliases keep mypy --strict honest at the call sites.
_load_kube_config: Callable[..., None] = k8s_config.load_kube_config
_load_incluster_config: Callable[..., None] = k8s_config.load_incluster_config


def connect(
    *,
    host: str | None = None,
    kubeconfig: str | None = None,
    context: str | None = None,
    connect_timeout_s: float = 3.0,
    read_timeout_s: float = 10.0,
    retry: RetryPolicy | None = None,
) -> KubeApi:
    """A KubeApi from, in order: `host` (no credentials: tests, `kubectl proxy`); `kubeconfig`
    (and `context`); the in-cluster service account when running in a pod; the default
    kubeconfig. The client's own urllib3 retries are off: KubeApi retries."""
    cfg = k8s.Configuration()
    if host is not None:
        cfg.host = host
    elif kubeconfig is not None:
        _load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg)
    else:
        try:
            _load_incluster_config(client_configuration=cfg)
        except k8s_config.ConfigException:
            _load_kube_config(context=context, client_configuration=cfg)
    cfg.retries = False
    return KubeApi(
        k8s.ApiClient(cfg), connect_timeout_s=connect_timeout_s, read_timeout_s=read_timeout_s, retry=retry
    )


def _meta(obj: Mapping[str, Any]) -> dict[str, Any]:
    return cast("dict[str, Any]", obj.get("metadata") or {})


def _annotations(obj: Mapping[str, Any]) -> dict[str, str]:
    return cast("dict[str, str]", _meta(obj).get("annotations") or {})


# ----------------------------------------------------------------------------- nodes


class KubeNodeRemediator:
    """NodeRemediator for Kubernetes nodes: CORDON and UNCORDON (see the module docstring)."""

    name = "kubernetes"
    supported_ops = frozenset({NodeOp.CORDON, NodeOp.UNCORDON})

    def __init__(
        self, api: KubeApi, *, taint_key: str = DEFAULT_TAINT, clock: Callable[[], float] = time.time
    ) -> None:
        self.api = api
        self.taint_key = taint_key
        self.clock = clock

    def resolve(self, node: str) -> dict[str, Any] | None:
        """The node object named `node`, or the one whose providerID ends with the instance id in `node`."""
        found = self.api.get_node(node)
        if found is not None:
            return found
        match = _INSTANCE_ID.search(node)
        if match is None:
            return None
        owners = [
            n
            for n in self.api.list_nodes()
            if (n.get("spec") or {}).get("providerID", "").endswith(f"/{match[0]}")
        ]
        return owners[0] if len(owners) == 1 else None

    def plan(self, request: RemediationRequest) -> list[str]:
        value = _label_value(request.fault.rule or "fault")
        if request.op is NodeOp.CORDON:
            return [
                f"node {request.node}: spec.unschedulable=true, taint {self.taint_key}={value}:NoSchedule, "
                f"annotation {ANN_CORDONED} (strategic merge patch with resourceVersion)"
            ]
        if request.op is NodeOp.UNCORDON:
            return [
                f"node {request.node}: remove taint {self.taint_key}; uncordon only if {ANN_CORDONED} is set"
            ]
        return [f"(kubernetes cannot {request.op.value} a node)"]

    def remediate(self, request: RemediationRequest) -> RemediationResult:
        started = self.clock()

        def finish(outcome: Outcome, detail: str, target: str | None = None) -> RemediationResult:
            return RemediationResult(request.node, request.op, outcome, detail, started, self.clock(), target)

        if request.op not in self.supported_ops:
            return finish(Outcome.REFUSED, f"kubernetes cannot {request.op.value} a node")
        try:
            for _ in range(3):  # read-modify-write; a 409 (someone changed the node) starts over
                node = self.resolve(request.node)
                if node is None:
                    return finish(Outcome.NOOP, f"no node {request.node} in the cluster (gone?)")
                name = str(_meta(node).get("name", request.node))
                body, detail = (self._cordon if request.op is NodeOp.CORDON else self._uncordon)(
                    node, request
                )
                if body is None:
                    return finish(Outcome.NOOP, detail, name)
                try:
                    self.api.patch_node(name, body)
                except ApiException as exc:
                    if exc.status == 409:
                        continue
                    raise
                return finish(Outcome.DONE, detail, name)
            return finish(Outcome.FAILED, f"node {request.node} kept changing under us (3 conflicts)")
        except Exception as exc:
            return finish(Outcome.FAILED, _describe(exc))

    def _cordon(self, node: dict[str, Any], request: RemediationRequest) -> tuple[dict[str, Any] | None, str]:
        name = _meta(node).get("name")
        spec = node.get("spec") or {}
        taints: list[dict[str, Any]] = list(spec.get("taints") or [])
        tainted = any(t.get("key") == self.taint_key for t in taints)
        unschedulable = bool(spec.get("unschedulable"))
        ours = ANN_CORDONED in _annotations(node)
        if unschedulable and tainted:
            who = "ftsup" if ours else "someone else"
            return None, f"node {name} is already cordoned (by {who}) and tainted {self.taint_key}"
        value = _label_value(request.fault.rule or "fault")
        new_spec: dict[str, Any] = {}
        meta: dict[str, Any] = {"resourceVersion": _meta(node).get("resourceVersion")}
        if not tainted:
            new_spec["taints"] = [*taints, {"key": self.taint_key, "value": value, "effect": "NoSchedule"}]
        if not unschedulable:
            new_spec["unschedulable"] = True
            meta["annotations"] = {ANN_CORDONED: request.idempotency_key}
            detail = f"cordoned node {name}; taint {self.taint_key}={value}:NoSchedule"
        else:
            detail = (
                f"node {name} was already cordoned by someone else: added taint "
                f"{self.taint_key}={value}:NoSchedule only (ftsup will not uncordon it)"
            )
        return {"metadata": meta, "spec": new_spec}, detail

    def _uncordon(
        self, node: dict[str, Any], request: RemediationRequest
    ) -> tuple[dict[str, Any] | None, str]:
        name = _meta(node).get("name")
        spec = node.get("spec") or {}
        taints: list[dict[str, Any]] = list(spec.get("taints") or [])
        kept = [t for t in taints if t.get("key") != self.taint_key]
        ours = ANN_CORDONED in _annotations(node)
        if not ours and len(kept) == len(taints):
            return None, f"node {name} carries no cordon or taint of ftsup's: left alone"
        new_spec: dict[str, Any] = {"taints": kept}
        meta: dict[str, Any] = {"resourceVersion": _meta(node).get("resourceVersion")}
        if ours:
            new_spec["unschedulable"] = False
            meta["annotations"] = {ANN_CORDONED: None}  # null deletes the key
            detail = f"uncordoned node {name} and removed taint {self.taint_key}"
        else:
            detail = f"removed taint {self.taint_key} from node {name}; its cordon is not ftsup's and stays"
        return {"metadata": meta, "spec": new_spec}, detail

    def observe(self, node: str) -> NodeHealth:
        """Ready condition (True healthy, False unhealthy, Unknown None) and whether ftsup cordoned it."""
        try:
            found = self.resolve(node)
        except Exception as exc:
            return NodeHealth(node, False, None, "unreachable", None, detail=_describe(exc))
        if found is None:
            return NodeHealth(node, False, None, "gone", None)
        conditions = (found.get("status") or {}).get("conditions") or []
        ready = next((c.get("status") for c in conditions if c.get("type") == "Ready"), "Unknown")
        healthy = True if ready == "True" else False if ready == "False" else None
        state = {"True": "Ready", "False": "NotReady"}.get(str(ready), "Unknown")
        if (found.get("spec") or {}).get("unschedulable"):
            state += ",SchedulingDisabled"
        return NodeHealth(
            node,
            True,
            healthy,
            state,
            str(_meta(found).get("name")),
            cordoned_by_ftsup=ANN_CORDONED in _annotations(found),
            detail=str((found.get("spec") or {}).get("providerID", "")),
        )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"Kubernetes API {exc.status} {exc.reason}".strip()
    return f"{type(exc).__name__}: {exc}"


# ----------------------------------------------------------------------------- the job


@dataclass(frozen=True, slots=True)
class JobKind:
    """Where a kind of training job keeps its suspend flag and how its pods are labelled."""

    group: str
    version: str
    plural: str
    suspend_path: tuple[str, ...]
    pod_label: str  # the label whose value is the job's name on every pod


JOB_KINDS: Mapping[str, JobKind] = {
    "jobset": JobKind(
        "jobset.x-k8s.io", "v1alpha2", "jobsets", ("spec", "suspend"), "jobset.sigs.k8s.io/jobset-name"
    ),
    "pytorchjob": JobKind(
        "kubeflow.org",
        "v1",
        "pytorchjobs",
        ("spec", "runPolicy", "suspend"),
        "training.kubeflow.org/job-name",
    ),
}


@dataclass(frozen=True, slots=True)
class KubeJobSpec:
    """The training job ftsup supervises on Kubernetes."""

    job: str  # ftsup's job name
    namespace: str
    kind: str  # a key of JOB_KINDS
    name: str  # the JobSet / PyTorchJob object's name
    pod_selector: str = ""  # default: JOB_KINDS[kind].pod_label=name
    restart: Literal["delete-pods", "suspend"] = "delete-pods"
    evict: bool = True  # pods on a cordoned node: Eviction (True) or plain delete
    grace_period_s: int = 30
    suspend_wait_s: float = 300.0  # restart: suspend: how long to wait for the pods to go
    spare_selector: str | None = None  # label selector of nodes the job may move to (reported as spares)
    poll_s: float = 2.0
    max_delay_s: float = 600.0  # upper bound on a backoff wait inside apply()

    def __post_init__(self) -> None:
        if self.kind not in JOB_KINDS:
            raise ValueError(f"kind must be one of {', '.join(JOB_KINDS)}, got {self.kind!r}")

    @property
    def selector(self) -> str:
        return self.pod_selector or f"{JOB_KINDS[self.kind].pod_label}={self.name}"

    @property
    def ref(self) -> CustomRef:
        k = JOB_KINDS[self.kind]
        return CustomRef(k.group, k.version, k.plural, self.namespace, self.name)


def _nested(value: object, path: tuple[str, ...]) -> dict[str, Any]:
    out: Any = value
    for key in reversed(path):
        out = {key: out}
    return cast("dict[str, Any]", out)


def _pod_exit(pod: Mapping[str, Any]) -> int | None:
    """None while the pod runs (or waits); else the first non-zero container exit code, or 0."""
    status = pod.get("status") or {}
    phase = status.get("phase")
    if phase not in _TERMINAL:
        return None
    codes = [
        int(cs["state"]["terminated"].get("exitCode", 1))
        for cs in status.get("containerStatuses") or []
        if (cs.get("state") or {}).get("terminated")
    ]
    bad = [c for c in codes if c != 0]
    return bad[0] if bad else (0 if phase == "Succeeded" else 1)


class KubernetesActuator:
    """Implements supervisor.act.base.Actuator for a JobSet or PyTorchJob. Thread-safe."""

    def __init__(
        self,
        spec: KubeJobSpec,
        api: KubeApi,
        *,
        taint_key: str = DEFAULT_TAINT,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spec = spec
        self.api = api
        self.nodes = KubeNodeRemediator(api, taint_key=taint_key, clock=clock)
        self.clock = clock
        self.sleep = sleep
        self.monotonic = monotonic
        self._lock = threading.RLock()
        self._results: dict[str, ActionResult] = {}
        self._members: tuple[str, ...] = ()  # the last non-empty set of nodes the job's pods ran on
        self._last: JobObservation | None = None

    # ------------------------------------------------------------------ reading

    def _object(self) -> dict[str, Any]:
        obj = self.api.get_custom(self.spec.ref)
        if obj is None:
            raise LookupError(f"{self.spec.ref} not found")
        return obj

    def _pods(self, field_selector: str | None = None) -> list[dict[str, Any]]:
        return self.api.list_pods(self.spec.namespace, self.spec.selector, field_selector=field_selector)

    @staticmethod
    def _live(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [p for p in pods if not _meta(p).get("deletionTimestamp")]

    def _attempt(self, obj: Mapping[str, Any]) -> int:
        try:
            return int(_annotations(obj).get(ANN_ATTEMPT, "0"))
        except ValueError:
            return 0

    # ------------------------------------------------------------------ Actuator protocol

    def launch(self) -> ActionResult:
        """Adopt the running job (ftsup does not create it). Refuses one ftsup halted until clear_halt()."""
        started = self.clock()
        try:
            obj = self._object()
        except Exception as exc:
            raise StartupError(f"cannot read {self.spec.ref}: {_describe(exc)}") from exc
        halted = _annotations(obj).get(ANN_HALTED)
        if halted is not None:
            raise StartupError(
                f"{self.spec.ref} was halted by ftsup ({ANN_HALTED}={halted}); inspect it, then run with "
                "--clear-halt to resume it"
            )
        seen = self.observe()
        attempt = self._attempt(obj)
        where = ", ".join(seen.nodes) or "no pod placed yet"
        return ActionResult(
            idempotency_key=f"{self.spec.job}:adopt:{attempt}",
            ok=True,
            detail=f"watching {self.spec.ref} (attempt {attempt}) on {where}",
            started_at=started,
            finished_at=self.clock(),
            attempt=attempt,
            nodes=seen.nodes,
        )

    def plan(self, action: Action) -> list[str]:
        s = self.spec
        ref = str(s.ref)
        if action.kind is Verdict.HALT:
            return [f"suspend {ref} ({'.'.join(JOB_KINDS[s.kind].suspend_path)}=true), annotate {ANN_HALTED}"]
        steps: list[str] = []
        if action.kind is Verdict.CORDON_AND_RESTART and action.node is not None:
            request = self._cordon_request(action, action.node)
            steps += [
                f"check {action.node} runs a pod of {ref} ({s.selector})",
                *self.nodes.plan(request),
                f"{'evict (policy/v1)' if s.evict else 'delete'} the job's pods on {action.node} "
                f"(grace {s.grace_period_s}s)",
            ]
        if action.delay_s > 0:
            steps.append(f"wait {action.delay_s:g}s (backoff)")
        if s.restart == "suspend":
            steps.append(f"suspend {ref}, wait up to {s.suspend_wait_s:g}s for its pods to go, resume it")
        else:
            steps.append(f"delete the pods of {ref} ({s.selector}); its controller recreates them")
        steps.append(f"annotate {ANN_ATTEMPT}+1, {ANN_LAST_ACTION}={action.idempotency_key}")
        return steps

    def apply(self, action: Action) -> ActionResult:
        """Carry out one action; a key seen before (in memory or on the job object) is not redone."""
        with self._lock:
            return apply_once(self._results, action, self._apply_or_fail, self.clock)

    def _apply_or_fail(self, action: Action, started: float) -> ActionResult:
        try:
            return self._apply(action, started)
        except Exception as exc:
            return self._result(action, started, False, f"{action.kind.value} failed: {_describe(exc)}")

    def _result(
        self, action: Action, started: float, ok: bool, detail: str, attempt: int | None = None
    ) -> ActionResult:
        return ActionResult(
            action.idempotency_key, ok, detail, started, self.clock(), attempt=attempt, nodes=self._members
        )

    def _apply(self, action: Action, started: float) -> ActionResult:
        obj = self._object()
        notes = _annotations(obj)
        attempt = self._attempt(obj)
        if notes.get(ANN_LAST_ACTION) == action.idempotency_key:
            return self._result(
                action,
                started,
                True,
                f"already done: {self.spec.ref} records {action.idempotency_key}",
                attempt,
            )
        if notes.get(ANN_HALTED) is not None:
            return self._result(action, started, False, f"{self.spec.ref} is halted; refusing to act")
        if action.kind is Verdict.IGNORE:
            return self._result(action, started, True, "nothing to do", attempt)
        if action.kind is Verdict.HALT:
            self._suspend(True, {ANN_HALTED: action.idempotency_key, ANN_LAST_ACTION: action.idempotency_key})
            return self._result(
                action, started, True, f"halted: suspended {self.spec.ref}; pods and files kept"
            )
        details: list[str] = []
        if action.kind is Verdict.CORDON_AND_RESTART:
            if action.node is None:
                return self._result(action, started, False, "cordon_and_restart names no node")
            ok, note = self._cordon_and_clear(action)
            details.append(note)
            if not ok:
                return self._result(action, started, False, note)
        if action.delay_s > 0:
            self.sleep(min(action.delay_s, self.spec.max_delay_s))
        ok, note = self._restart(action, attempt + 1)
        details.append(note)
        return self._result(action, started, ok, "; ".join(details), attempt + 1 if ok else None)

    @staticmethod
    def _cordon_request(action: Action, node: str) -> RemediationRequest:
        # decide() writes "<rule> on <node>: ..." for a cordon: the rule becomes the taint's value.
        rule = action.reason.split(" ", 1)[0] if action.reason else None
        return RemediationRequest(
            node, NodeOp.CORDON, action.idempotency_key, action.reason, action.incident_id, NodeFault(rule)
        )

    def _cordon_and_clear(self, action: Action) -> tuple[bool, str]:
        node = action.node
        assert node is not None
        if not _SELECTOR_NODE.fullmatch(node):
            return False, f"refusing to cordon {node[:64]!r}: not a valid node name"
        on_node = self._pods(field_selector=f"spec.nodeName={node}")
        health = self.nodes.observe(node)
        if not on_node and not health.cordoned_by_ftsup:
            return False, f"refusing to cordon {node}: no pod of {self.spec.ref} runs there"
        cordon = self.nodes.remediate(self._cordon_request(action, node))
        if not cordon.ok:
            return False, f"cordon of {node} failed: {cordon.detail}"
        cleared = []
        for pod in self._live(on_node):
            pod_name = str(_meta(pod).get("name"))
            how: str
            if self.spec.evict:
                how = self.api.evict_pod(self.spec.namespace, pod_name, self.spec.grace_period_s)
                if how == "blocked":
                    self.api.delete_pod(self.spec.namespace, pod_name, self.spec.grace_period_s)
                    how = "deleted (eviction blocked by a PodDisruptionBudget)"
            else:
                how = (
                    "deleted"
                    if self.api.delete_pod(self.spec.namespace, pod_name, self.spec.grace_period_s)
                    else "gone"
                )
            cleared.append(f"{pod_name} {how}")
        self._members = tuple(n for n in self._members if n != node)
        return True, f"{cordon.detail}; pods on {node}: {', '.join(cleared) or 'none left'}"

    def _suspend(self, suspended: bool, annotations: Mapping[str, str | None]) -> None:
        body = _nested(suspended, JOB_KINDS[self.spec.kind].suspend_path)
        body["metadata"] = {"annotations": dict(annotations)}
        self.api.patch_custom(self.spec.ref, body)

    def _restart(self, action: Action, attempt: int) -> tuple[bool, str]:
        marks = {
            ANN_ATTEMPT: str(attempt),
            ANN_LAUNCHED_AT: f"{self.clock():.3f}",
            ANN_LAST_ACTION: action.idempotency_key,
        }
        if self.spec.restart == "suspend":
            self._suspend(True, {})
            deadline = self.monotonic() + self.spec.suspend_wait_s
            while self._pods():
                if self.monotonic() >= deadline:
                    return False, (
                        f"suspended {self.spec.ref}, but its pods did not go within "
                        f"{self.spec.suspend_wait_s:g}s; left suspended"
                    )
                self.sleep(self.spec.poll_s)
            self._suspend(False, marks)
            return True, f"restarted {self.spec.ref} (suspend, resume) as attempt {attempt}"
        deleted = []
        for pod in self._live(self._pods()):
            pod_name = str(_meta(pod).get("name"))
            if self.api.delete_pod(self.spec.namespace, pod_name, self.spec.grace_period_s):
                deleted.append(pod_name)
        self.api.patch_custom(self.spec.ref, {"metadata": {"annotations": marks}})
        return (
            True,
            f"restarted {self.spec.ref} as attempt {attempt}: deleted pods {', '.join(deleted) or 'none'}",
        )

    def observe(self) -> JobObservation:
        """Pods (label selector) -> nodes, running, exit codes; attempt from the job's annotations;
        cordoned = nodes carrying ftsup's cordon annotation. While no pod is placed yet (right
        after a restart) the nodes are the last ones seen. Never raises: when the API cannot be
        read, the last observation is returned with running=True and no exit codes (unknown is
        never read as a failure), and the failure is logged."""
        with self._lock:
            try:
                self._last = self._observe()
            except Exception as exc:
                log.warning("kubernetes.observe_failed", job=self.spec.job, error=_describe(exc))
                last = self._last
                self._last = JobObservation(
                    job=self.spec.job,
                    attempt=last.attempt if last else 0,
                    nodes=self._members,
                    spares=last.spares if last else (),
                    cordoned=last.cordoned if last else (),
                    running=True,
                    launched_at=last.launched_at if last else None,
                )
            return self._last

    def _observe(self) -> JobObservation:
        with self._lock:
            obj = self._object()
            pods = self._live(self._pods())
            codes: dict[str, int | None] = {}
            running = False
            for pod in pods:
                node = (pod.get("spec") or {}).get("nodeName")
                code = _pod_exit(pod)
                running = running or code is None
                if node:
                    prev = codes.get(str(node), 0)
                    codes[str(node)] = code if code is None or prev == 0 or prev is None else prev
            if codes:
                self._members = tuple(sorted(codes))
            cordoned = tuple(
                sorted(
                    str(_meta(n).get("name"))
                    for n in self.api.list_nodes(field_selector="spec.unschedulable=true")
                    if ANN_CORDONED in _annotations(n)
                )
            )
            launched = _annotations(obj).get(ANN_LAUNCHED_AT)
            return JobObservation(
                job=self.spec.job,
                attempt=self._attempt(obj),
                nodes=self._members,
                spares=self._spares(),
                cordoned=cordoned,
                running=running,
                launched_at=float(launched) if launched else None,
                exit_codes=tuple(sorted(codes.items())),
            )

    def _spares(self) -> tuple[str, ...]:
        """Ready, schedulable nodes matching `spare_selector` that run no pod of the job. Kubernetes
        picks where pods go; this only tells decide() whether a cordon leaves somewhere to go."""
        if not self.spec.spare_selector:
            return ()
        spares = []
        for node in self.api.list_nodes(label_selector=self.spec.spare_selector):
            name = str(_meta(node).get("name"))
            conditions = (node.get("status") or {}).get("conditions") or []
            ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
            if ready and not (node.get("spec") or {}).get("unschedulable") and name not in self._members:
                spares.append(name)
        return tuple(sorted(spares))

    def stop(self) -> None:
        """Nothing to stop: the job belongs to the cluster, not to this process."""

    def clear_halt(self) -> None:
        """A human inspected the halted job: resume it and drop the halt mark."""
        with self._lock:
            self._suspend(False, {ANN_HALTED: None})


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True, slots=True)
class _Parsed:
    """A `kubernetes` block, checked: the job, and how to reach its API server."""

    spec: KubeJobSpec
    taint_key: str
    kubeconfig: str | None
    context: str | None
    connect_timeout_s: float
    read_timeout_s: float
    retry: RetryPolicy


def _parse(settings: Mapping[str, object], *, job: str, prefix: str) -> _Parsed:
    """Read the block (see from_settings); SettingsError names every problem. No I/O."""
    read = SettingsReader(settings, prefix)
    namespace = read.text("namespace", "default") or "default"
    kind = read.choice("kind", "", tuple(JOB_KINDS))
    if not kind and settings.get("kind") is None:  # a wrong kind was named by choice() already
        read.problem("kind", f"required: one of {', '.join(JOB_KINDS)}")
    name = read.text("name", required=True) or ""
    selector = read.text("pod_selector", "") or ""
    restart = read.choice("restart", "delete-pods", ("delete-pods", "suspend"))
    evict = read.flag("evict", True)
    grace = read.integer("grace_period_s", 30, minimum=0)
    wait_s = read.number("suspend_wait_s", 300.0, positive=True)
    spare_selector = read.text("spare_selector")
    taint_key = read.text("taint_key", DEFAULT_TAINT) or DEFAULT_TAINT
    kubeconfig = read.text("kubeconfig")
    context = read.text("context")
    connect_s = read.number("connect_timeout_s", 3.0, positive=True)
    read_s = read.number("read_timeout_s", 10.0, positive=True)
    attempts = read.integer("max_attempts", 4, minimum=1)
    budget = read.number("retry_budget_s", 20.0)
    read.done()
    spec = KubeJobSpec(
        job=job,
        namespace=namespace,
        kind=kind,
        name=name,
        pod_selector=selector,
        restart=cast(Literal["delete-pods", "suspend"], restart),
        evict=evict,
        grace_period_s=grace,
        suspend_wait_s=wait_s,
        spare_selector=spare_selector,
    )
    return _Parsed(spec, taint_key, kubeconfig, context, connect_s, read_s, RetryPolicy(attempts, budget))


def check_settings(settings: Mapping[str, object], *, job: str, prefix: str = "actuator.kubernetes") -> None:
    """Check the `kubernetes` block exactly as from_settings does, without reading a kubeconfig or
    connecting (what `ftsup config check` runs). Raises SettingsError naming every problem."""
    _parse(settings, job=job, prefix=prefix)


def from_settings(
    settings: Mapping[str, object],
    *,
    job: str,
    api: KubeApi | None = None,
    prefix: str = "actuator.kubernetes",
) -> KubernetesActuator:
    """Build a KubernetesActuator from the `kubernetes` config block; SettingsError names every problem.

    Keys:
      namespace: default                  the job's namespace
      kind: jobset | pytorchjob           required
      name: NAME                          the JobSet / PyTorchJob object (required)
      pod_selector: LABEL-SELECTOR        default jobset.sigs.k8s.io/jobset-name=NAME or
                                          training.kubeflow.org/job-name=NAME
      restart: delete-pods | suspend      how to restart (default delete-pods)
      evict: true                         evict (policy/v1) pods on a cordoned node; false: delete
      grace_period_s: 30, suspend_wait_s: 300
      spare_selector: LABEL-SELECTOR      nodes the job can move to; reported as spares (decide() only
                                          cordons a node when a spare exists). Unset: no spares
      taint_key: ftsup.io/unhealthy
      kubeconfig: PATH, context: NAME     default: in-cluster service account, else ~/.kube/config
      connect_timeout_s: 3, read_timeout_s: 10, max_attempts: 4, retry_budget_s: 20
    `api` replaces the connection the keys describe (tests). Connecting reads the kubeconfig (or
    the in-cluster service account) but sends no request.
    """
    parsed = _parse(settings, job=job, prefix=prefix)
    if api is None:
        api = connect(
            kubeconfig=str(Path(parsed.kubeconfig).expanduser()) if parsed.kubeconfig else None,
            context=parsed.context,
            connect_timeout_s=parsed.connect_timeout_s,
            read_timeout_s=parsed.read_timeout_s,
            retry=parsed.retry,
        )
    return KubernetesActuator(parsed.spec, api, taint_key=parsed.taint_key)

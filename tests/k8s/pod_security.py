"""The Pod Security Standards' ``restricted`` profile, written out as checks on a pod manifest.

The k8s tier's API server (1.20) has no PodSecurity admission (1.23+), so the tests check pods
against the profile themselves: every control of the ``baseline`` level and the ``restricted``
additions, as https://kubernetes.io/docs/concepts/security/pod-security-standards/ lists them
for the ``latest`` version. :func:`restricted_violations` returns one readable line per broken
control; an empty list means the pod would be admitted to a namespace enforcing ``restricted``.
"""

from __future__ import annotations

from typing import Any

Json = dict[str, Any]

RESTRICTED_VOLUME_TYPES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)
SELINUX_TYPES = frozenset(
    {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
)
SECCOMP_ALLOWED = frozenset({"RuntimeDefault", "Localhost"})
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"


def containers_of(spec: Json) -> list[Json]:
    return [
        *spec.get("initContainers", []),
        *spec.get("containers", []),
        *spec.get("ephemeralContainers", []),
    ]


def restricted_violations(pod: Json) -> list[str]:
    """What keeps ``pod`` (a Pod manifest, or a pod template with metadata and spec) out of a
    namespace that enforces ``restricted``."""
    metadata = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    pod_sc = spec.get("securityContext") or {}
    containers = containers_of(spec)
    found: list[str] = []

    def bad(control: str, where: str, detail: str) -> None:
        found.append(f"{control}: {where}: {detail}")

    # --- baseline -------------------------------------------------------------------------
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            bad("host namespaces", "pod", f"{field} is true")
    if (pod_sc.get("windowsOptions") or {}).get("hostProcess"):
        bad("HostProcess", "pod", "windowsOptions.hostProcess")
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if "hostPath" in kinds:
            bad("hostPath volumes", volume["name"], "hostPath")
        for kind in kinds - RESTRICTED_VOLUME_TYPES:
            bad("volume types", volume["name"], f"{kind} is not allowed")
    for sysctl in pod_sc.get("sysctls", []):
        if sysctl.get("name") not in SAFE_SYSCTLS:
            bad("sysctls", "pod", f"{sysctl.get('name')} is not a safe sysctl")
    for key, value in (metadata.get("annotations") or {}).items():
        if key.startswith(APPARMOR_ANNOTATION) and not (
            value == "runtime/default" or value.startswith("localhost/")
        ):
            bad("AppArmor", key, value)
    _check_selinux(pod_sc, "pod", bad)
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    if pod_seccomp is not None and pod_seccomp not in SECCOMP_ALLOWED:
        bad("seccomp", "pod", f"seccompProfile {pod_seccomp}")
    if pod_sc.get("runAsUser") == 0:
        bad("non-root user", "pod", "runAsUser 0")
    if pod_sc.get("runAsNonRoot") is False:
        bad("running as non-root", "pod", "runAsNonRoot false")

    for container in containers:
        where = f"container {container.get('name')}"
        sc = container.get("securityContext") or {}
        if sc.get("privileged"):
            bad("privileged", where, "privileged true")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            bad("HostProcess", where, "windowsOptions.hostProcess")
        for port in container.get("ports", []):
            if port.get("hostPort"):
                bad("host ports", where, f"hostPort {port['hostPort']}")
        if sc.get("procMount") not in (None, "Default"):
            bad("/proc mount", where, f"procMount {sc['procMount']}")
        apparmor = (sc.get("appArmorProfile") or {}).get("type")
        if apparmor is not None and apparmor not in SECCOMP_ALLOWED:
            bad("AppArmor", where, f"appArmorProfile {apparmor}")
        _check_selinux(sc, where, bad)

        # --- restricted ---------------------------------------------------------------------
        if sc.get("allowPrivilegeEscalation") is not False:
            bad("privilege escalation", where, "allowPrivilegeEscalation is not false")
        non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
        if non_root is not True:
            bad("running as non-root", where, "runAsNonRoot is not true (pod or container)")
        if sc.get("runAsUser") == 0:
            bad("non-root user", where, "runAsUser 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in SECCOMP_ALLOWED:
            bad("seccomp", where, f"seccompProfile {seccomp} (RuntimeDefault or Localhost needed)")
        capabilities = sc.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            bad("capabilities", where, "does not drop ALL")
        for added in capabilities.get("add") or []:
            if added != "NET_BIND_SERVICE":
                bad("capabilities", where, f"adds {added}")
    return found


def _check_selinux(context: Json, where: str, bad: Any) -> None:
    options = context.get("seLinuxOptions") or {}
    if options.get("type", "") not in SELINUX_TYPES:
        bad("SELinux", where, f"type {options['type']}")
    for field in ("user", "role"):
        if options.get(field):
            bad("SELinux", where, f"{field} {options[field]}")

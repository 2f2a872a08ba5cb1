"""The Helm chart (helm/rexec): lint, strict schema validation of what it renders, and the
objects it renders checked against the reference design and against the settings the broker and
the spawner really read."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from tests.helm.tools import (
    CHART,
    FULL_VALUES,
    NAMESPACE,
    container,
    env_of,
    find,
    render,
    run_helm,
    template_args,
)

pytestmark = pytest.mark.integration

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate.utils",
    reason="the chart tests need kubernetes-validate (pip install -e '.[test]')",
)

# A recent Kubernetes, and the oldest whose schemas kubernetes-validate ships (nothing is
# fetched); the k8s tier adds a real 1.20 API server.
KUBERNETES_VERSIONS = ("1.25.0", "1.35.0")
VALUE_SETS = {"default": ([], []), "full": ([FULL_VALUES], [])}
PLAINTEXT = ["curve.enabled=false"]


@pytest.fixture(scope="module")
def default_objects(helm: Path) -> list[dict[str, Any]]:
    return render(helm)


@pytest.fixture(scope="module")
def full_objects(helm: Path) -> list[dict[str, Any]]:
    return render(helm, [FULL_VALUES])


def pod_templates(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"]["spec"])
        for o in objects
        if o["kind"] in ("Deployment", "Job")
    ]


# --- lint and schema validation ------------------------------------------------------------


@pytest.mark.parametrize("which", sorted(VALUE_SETS))
def test_helm_lint_strict_passes(helm: Path, which: str) -> None:
    values, _ = VALUE_SETS[which]
    args = ["lint", "--strict", str(CHART)]
    for path in values:
        args += ["--values", str(path)]
    proc = run_helm(helm, args, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("sets", [[], PLAINTEXT], ids=["curve", "plaintext"])
@pytest.mark.parametrize("which", sorted(VALUE_SETS))
def test_rendered_objects_validate_strictly(helm: Path, which: str, sets: list[str]) -> None:
    values, _ = VALUE_SETS[which]
    objects = render(helm, values, sets)
    assert objects
    for version in KUBERNETES_VERSIONS:
        for obj in objects:
            where = f"{obj['kind']}/{obj['metadata']['name']}"
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{where} does not validate against Kubernetes {version}: {exc}")


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["broker.logLevel=DEBUG"], "at '/broker/logLevel': value must be one of"),
        (["spawner.logLevel=debug"], "at '/spawner/logLevel': value must be one of"),
        (["broker.frontendPort=abc"], "at '/broker/frontendPort': got string, want integer"),
        (["spawner.port=70000"], "at '/spawner/port'"),
        (["worker.profiles.big.cpu=2"], "additional properties 'cpu' not allowed"),
        (["worker.resources.cpu_limit=two"], "at '/worker/resources/cpu_limit'"),
        (
            ["worker.resources.ephemeral_storage_limit=lots"],
            "at '/worker/resources/ephemeral_storage_limit'",
        ),
        (["worker.tmpVolumeSize=big"], "at '/worker/tmpVolumeSize'"),
        (["worker.podSecurityVersion=1.30"], "at '/worker/podSecurityVersion'"),
        (["worker.maxPerUser=-1"], "at '/worker/maxPerUser'"),
        (["worker.credentialTtl=60"], "at '/worker/credentialTtl': minimum: got 60, want 300"),
        (["worker.hungAfter=-1"], "at '/worker/hungAfter'"),
        (["broker.connections.burst=0"], "at '/broker/connections/burst'"),
        (["broker.connections.rate=0"], "at '/broker/connections/rate'"),
        (["broker.connections.greetWithin=soon"], "at '/broker/connections/greetWithin'"),
        (["spawner.maxBodyBytes=0"], "at '/spawner/maxBodyBytes'"),
        (["broker.resources.limits.ephemeral-storage=x"], "at '/broker/resources/limits"),
        (["worker.namespacePrefix=Users_"], "at '/worker/namespacePrefix'"),
        (["authApiUrl=idp.example.org"], "at '/authApiUrl'"),
        (["auth.method=PUT"], "at '/auth/method'"),
        (["securityContext.readOnlyRootFilesystem=false"], "/securityContext"),
        (["podSecurityContext.runAsNonRoot=false"], "/podSecurityContext"),
        (["curve.enabeld=false"], "additional properties 'enabeld' not allowed"),
        (["networkPolicy.clientCidrs={everyone}"], "at '/networkPolicy/clientCidrs/0'"),
        (["worker.dns.namespace=Kube_System"], "at '/worker/dns/namespace'"),
        (["worker.dns.cidrs={anywhere}"], "at '/worker/dns/cidrs/0'"),
        (["worker.dns.podLabels.k8s-app=not valid"], "at '/worker/dns/podLabels"),
    ],
)
def test_schema_rejects_bad_values_with_a_clear_message(
    helm: Path, sets: list[str], message: str
) -> None:
    proc = run_helm(helm, template_args(sets=sets), check=False)
    assert proc.returncode != 0, f"--set {sets} was accepted"
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert message in proc.stderr, proc.stderr


def test_extra_env_cannot_silently_override_a_chart_setting(helm: Path) -> None:
    sets = ["spawner.extraEnv[0].name=REXEC_SPAWNER_PORT", "spawner.extraEnv[0].value=1"]
    proc = run_helm(helm, template_args(sets=sets), check=False)
    assert proc.returncode != 0
    assert "spawner.extraEnv sets REXEC_SPAWNER_PORT" in proc.stderr
    sets = ["spawner.extraEnv[0].name=REXEC_K8S_KUBECONFIG", "spawner.extraEnv[0].value=/k"]
    spawner = container(find(render(helm, sets=sets), "Deployment", "rexec-spawner"))
    assert env_of(spawner)["REXEC_K8S_KUBECONFIG"] == "/k"


def test_curve_without_a_key_source_fails_with_the_fix(helm: Path) -> None:
    proc = run_helm(helm, template_args(sets=["curve.generate=false"]), check=False)
    assert proc.returncode != 0
    assert "curve.existingSecret" in proc.stderr and "rexec keys" in proc.stderr


# --- the broker as the reference design names it ---------------------------------------------


def test_broker_services_are_nodeport_30001_to_5559_and_clusterip_5560(
    default_objects: list[dict[str, Any]],
) -> None:
    external = find(default_objects, "Service", "rexec-broker-external-ip")
    internal = find(default_objects, "Service", "rexec-broker-internal-ip")
    broker = container(find(default_objects, "Deployment", "rexec-broker"))
    ports = {p["name"]: p["containerPort"] for p in broker["ports"]}
    assert ports == {"frontend": 5559, "backend": 5560}, "no control port, nothing else"

    assert external["spec"]["type"] == "NodePort"
    [ext] = external["spec"]["ports"]
    assert ext["nodePort"] == 30001 and ports[ext["targetPort"]] == 5559

    assert internal["spec"]["type"] == "ClusterIP"
    [inner] = internal["spec"]["ports"]
    assert inner["port"] == 5560 and ports[inner["targetPort"]] == 5560

    pod_labels = find(default_objects, "Deployment", "rexec-broker")["spec"]["template"]
    for service in (external, internal):
        selector = service["spec"]["selector"]
        assert selector.items() <= pod_labels["metadata"]["labels"].items()


def test_broker_binds_the_ports_its_services_target(default_objects: list[dict[str, Any]]) -> None:
    env = env_of(container(find(default_objects, "Deployment", "rexec-broker")))
    assert env["REXEC_BROKER_FRONTEND"] == "tcp://0.0.0.0:5559"
    assert env["REXEC_BROKER_BACKEND"] == "tcp://0.0.0.0:5560"


def test_workers_and_spawner_are_given_the_in_cluster_service_addresses(
    default_objects: list[dict[str, Any]],
) -> None:
    env = env_of(container(find(default_objects, "Deployment", "rexec-spawner")))
    domain = f"{NAMESPACE}.svc.cluster.local"
    assert env["REXEC_BROKER_BACKEND_URL"] == f"tcp://rexec-broker-internal-ip.{domain}:5560"
    assert env["REXEC_BROKER_INTERNAL_URL"] == f"tcp://rexec-broker-external-ip.{domain}:5559"
    assert env["REXEC_BROKER_URL"] == f"tcp://rexec-broker-external-ip.{domain}:5559"


def test_worker_dns_egress_settings(
    default_objects: list[dict[str, Any]], full_objects: list[dict[str, Any]]
) -> None:
    env = env_of(container(find(default_objects, "Deployment", "rexec-spawner")))
    assert env["REXEC_K8S_DNS_NAMESPACE"] == "kube-system"
    unset = ("REXEC_K8S_DNS_NAMESPACE_LABELS", "REXEC_K8S_DNS_POD_LABELS", "REXEC_K8S_DNS_CIDRS")
    assert not set(unset) & set(env), "the spawner's defaults apply"
    full = env_of(container(find(full_objects, "Deployment", "rexec-spawner")))
    assert full["REXEC_K8S_DNS_NAMESPACE_LABELS"] == "rexec.dev/dns=true"
    assert full["REXEC_K8S_DNS_POD_LABELS"] == "app=coredns,tier=dns"
    assert full["REXEC_K8S_DNS_CIDRS"] == "169.254.20.10/32"


def test_an_explicit_worker_url_replaces_the_in_cluster_one_and_widens_egress(helm: Path) -> None:
    sets = ["broker.workerUrl=tcp://broker.example.org:30002"]
    env = env_of(container(find(render(helm, sets=sets), "Deployment", "rexec-spawner")))
    assert env["REXEC_BROKER_BACKEND_URL"] == "tcp://broker.example.org:30002"
    # Workers elsewhere cannot be narrowed to this cluster's broker pods.
    assert "REXEC_K8S_BROKER_NAMESPACE" not in env and "REXEC_K8S_BROKER_POD_LABELS" not in env


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        (["global.authApiUrl=https://shared.example.org/i"], "https://shared.example.org/i"),
        (
            [
                "global.authApiUrl=https://shared.example.org/i",
                "authApiUrl=https://own.example.org/i",
            ],
            "https://own.example.org/i",
        ),
    ],
)
def test_auth_api_url_can_come_from_global_values(
    helm: Path, sets: list[str], expected: str
) -> None:
    objects = render(helm, sets=sets)
    for name in ("rexec-broker", "rexec-spawner"):
        assert env_of(container(find(objects, "Deployment", name)))["AUTH_API_URL"] == expected


def test_public_broker_url_is_what_clients_are_told(full_objects: list[dict[str, Any]]) -> None:
    env = env_of(container(find(full_objects, "Deployment", "rexec-spawner")))
    assert env["REXEC_BROKER_URL"] == "tcp://rexec.example.org:30001"


# --- RBAC --------------------------------------------------------------------------------------


Rules = dict[tuple[str, str, tuple[str, ...]], set[str]]


def backend_rules() -> Rules:
    """What the spawner's Kubernetes backend calls, from the backend itself."""
    from rexec_spawner.backends.kubernetes.rbac import RBAC_RULES

    return rules_of({"rules": RBAC_RULES})


def rules_of(role: dict[str, Any]) -> Rules:
    """(API group, resource, resource names or ()) -> verbs."""
    table: Rules = {}
    for rule in role["rules"]:
        names = tuple(sorted(rule.get("resourceNames") or ()))
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                table.setdefault((group, resource, names), set()).update(rule["verbs"])
    return table


@pytest.mark.parametrize("which", sorted(VALUE_SETS))
def test_spawner_rbac_is_exactly_what_the_backend_uses(helm: Path, which: str) -> None:
    objects = render(helm, VALUE_SETS[which][0])
    [role] = [o for o in objects if o["kind"] == "ClusterRole"]
    assert rules_of(role) == backend_rules()
    for resource in ("namespaces", "pods", "secrets", "configmaps"):
        assert "delete" in rules_of(role)[("", resource, ())], f"the spawner deletes {resource}"
    # The namespace-wide objects it keeps up to date are its own by name; only "create" (which
    # RBAC cannot limit to a name) is granted without one.
    for (_, resource, names), verbs in rules_of(role).items():
        if resource in ("networkpolicies", "resourcequotas", "limitranges"):
            assert names == ("rexec-workers",) or verbs == {"create"}, (resource, verbs)
    for rule in role["rules"]:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], f"wildcard in {field}: {rule}"
    [binding] = [o for o in objects if o["kind"] == "ClusterRoleBinding"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    spawner = find(objects, "Deployment", "rexec-spawner")["spec"]["template"]["spec"]
    [subject] = binding["subjects"]
    assert subject == {
        "kind": "ServiceAccount",
        "name": spawner["serviceAccountName"],
        "namespace": NAMESPACE,
    }
    find(objects, "ServiceAccount", spawner["serviceAccountName"])
    # Cluster-scoped names carry the namespace, so two releases never overwrite each other.
    assert NAMESPACE in role["metadata"]["name"]


def test_key_generation_job_may_only_create_secrets_and_read_its_own(
    default_objects: list[dict[str, Any]],
) -> None:
    role = find(default_objects, "Role", "rexec-curve-keygen")
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["rexec-curve"],
            "verbs": ["get"],
        },
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
    ]
    kinds = {o["kind"] for o in default_objects}
    assert "ClusterRole" in kinds and sum(o["kind"] == "ClusterRole" for o in default_objects) == 1


# --- pods: hardening, probes, logging ----------------------------------------------------------


@pytest.mark.parametrize("which", sorted(VALUE_SETS))
def test_every_pod_is_hardened(helm: Path, which: str) -> None:
    objects = render(helm, VALUE_SETS[which][0])
    templates = pod_templates(objects)
    names = {name.split("/")[0] for name, _ in templates}
    assert names == ({"Deployment", "Job"} if which == "default" else {"Deployment"})
    for where, spec in templates:
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0, where
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert spec["enableServiceLinks"] is False, where
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert c["resources"]["requests"] and c["resources"]["limits"], where
    broker = find(objects, "Deployment", "rexec-broker")["spec"]["template"]["spec"]
    assert broker["automountServiceAccountToken"] is False


@pytest.mark.parametrize("which", sorted(VALUE_SETS))
def test_every_emptydir_is_bounded_and_fits_the_ephemeral_storage_limit(
    helm: Path, which: str
) -> None:
    """The kubelet evicts a pod past an emptyDir's sizeLimit or its ephemeral-storage limit
    (emptyDirs count against it); without them a pod can fill its node's disk."""
    from rexec_spawner.backends.kubernetes.quantity import parse_quantity

    for where, spec in pod_templates(render(helm, VALUE_SETS[which][0])):
        sizes = [
            parse_quantity(str(v["emptyDir"]["sizeLimit"]))
            for v in spec.get("volumes", [])
            if "emptyDir" in v
        ]
        assert all(
            v["emptyDir"].get("sizeLimit") for v in spec.get("volumes", []) if "emptyDir" in v
        )
        for c in spec["containers"]:
            limit = parse_quantity(str(c["resources"]["limits"]["ephemeral-storage"]))
            request = parse_quantity(str(c["resources"]["requests"]["ephemeral-storage"]))
            assert 0 < request <= limit and limit >= sum(sizes), where


@pytest.mark.parametrize("sets", [[], PLAINTEXT], ids=["curve", "plaintext"])
@pytest.mark.parametrize("which", sorted(VALUE_SETS))
def test_every_pod_satisfies_the_restricted_pod_security_standard(
    helm: Path, which: str, sets: list[str]
) -> None:
    """So the release namespace can enforce `restricted` too (docs/helm.md)."""
    from tests.k8s.pod_security import restricted_violations

    objects = render(helm, VALUE_SETS[which][0], sets)
    for obj in objects:
        if obj["kind"] in ("Deployment", "Job"):
            where = f"{obj['kind']}/{obj['metadata']['name']}"
            assert restricted_violations(obj["spec"]["template"]) == [], where


def test_probes(default_objects: list[dict[str, Any]]) -> None:
    spawner = container(find(default_objects, "Deployment", "rexec-spawner"))
    for probe in ("readinessProbe", "livenessProbe"):
        assert spawner[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    broker = container(find(default_objects, "Deployment", "rexec-broker"))
    assert broker["readinessProbe"]["tcpSocket"] == {"port": "frontend"}
    assert broker["livenessProbe"]["tcpSocket"] == {"port": "backend"}


@pytest.mark.parametrize("which", sorted(VALUE_SETS))
def test_no_debug_logging(helm: Path, which: str) -> None:
    objects = render(helm, VALUE_SETS[which][0])
    for where, spec in pod_templates(objects):
        for c in spec["containers"]:
            words = [*c.get("command", []), *c.get("args", [])]
            text = " ".join(words).lower()
            assert "debug" not in text, where
            for value in env_of(c).values():
                assert "debug" not in str(value).lower(), where


# --- settings: the names and values the code reads ---------------------------------------------

_DOC_NAME = re.compile(r"``((?:AUTH|REXEC)_[A-Z0-9_]+)``")
_HELP_NAME = re.compile(r"\[((?:AUTH|REXEC)_[A-Z0-9_]+)")


def documented_spawner_env() -> set[str]:
    import rexec.auth
    import rexec_spawner.config

    return set(_DOC_NAME.findall(rexec_spawner.config.__doc__ or "")) | set(
        _DOC_NAME.findall(rexec.auth.__doc__ or "")
    )


def documented_broker_env() -> set[str]:
    import rexec.auth
    from rexec_broker.command import make_parser

    return set(_HELP_NAME.findall(make_parser("rexec broker").format_help())) | set(
        _DOC_NAME.findall(rexec.auth.__doc__ or "")
    )


def resolved_env(container_spec: dict[str, Any]) -> dict[str, str]:
    """The container's environment with Secret references replaced by plausible values."""
    import zmq

    public, _ = zmq.curve_keypair()
    env = {}
    for name, value in env_of(container_spec).items():
        if isinstance(value, dict):
            assert value["secretKeyRef"]["key"] == "broker.pub", name
            value = public.decode()
        env[name] = value
    return env


@pytest.mark.parametrize("which", sorted(VALUE_SETS))
def test_env_names_are_ones_the_code_documents(helm: Path, which: str) -> None:
    objects = render(helm, VALUE_SETS[which][0])
    spawner_env = set(env_of(container(find(objects, "Deployment", "rexec-spawner"))))
    broker_env = set(env_of(container(find(objects, "Deployment", "rexec-broker"))))
    spawner_known = documented_spawner_env() | {"REXEC_HOME"}  # rexec.profile.rexec_home
    assert spawner_env - spawner_known == set()
    assert broker_env - documented_broker_env() == set()
    # The ones the deployment depends on are really set.
    assert {
        "REXEC_SPAWNER_BACKEND",
        "REXEC_SIGNING_KEY_FILE",
        "REXEC_BROKER_BACKEND_URL",
        "REXEC_BROKER_PUBLIC_KEY",
        "REXEC_K8S_RELEASE",
        "REXEC_K8S_WORKER_IMAGE",
        "REXEC_K8S_BROKER_NAMESPACE",
        "REXEC_K8S_BROKER_POD_LABELS",
    } <= spawner_env
    assert {"REXEC_SIGNING_KEY_FILE", "REXEC_CURVE_SECRET_KEY_FILE"} <= broker_env


# Spawner settings the chart leaves unset on purpose.
NOT_FOR_THE_CHART = {
    "REXEC_K8S_KUBECONFIG": "in a pod the spawner uses its ServiceAccount (extraEnv can set it)",
    "REXEC_WORKER_COMMAND": "the local backend's worker command",
    "REXEC_LOCAL_USERS": "who the local backend serves",
}


def test_every_spawner_setting_has_a_value_in_the_chart(full_objects: list[dict[str, Any]]) -> None:
    """A setting added to the spawner shows up here until the chart offers it."""
    spawner_env = set(env_of(container(find(full_objects, "Deployment", "rexec-spawner"))))
    missing = documented_spawner_env() - spawner_env - set(NOT_FOR_THE_CHART)
    assert not missing, f"the chart does not set {sorted(missing)}: add values for them"


@pytest.mark.parametrize("which", sorted(VALUE_SETS))
def test_spawner_settings_load_from_the_rendered_environment(helm: Path, which: str) -> None:
    from rexec_spawner.cli import make_parser
    from rexec_spawner.config import KubernetesSettings, SpawnerSettings

    objects = render(helm, VALUE_SETS[which][0])
    spawner = container(find(objects, "Deployment", "rexec-spawner"))
    assert spawner["command"] == ["rexec", "spawner"]
    make_parser("rexec spawner").parse_args(spawner["args"])  # exits on an unknown flag
    env = resolved_env(spawner)
    settings = SpawnerSettings.from_env(env)
    assert settings.backend == "kubernetes"
    assert settings.host == "0.0.0.0" and settings.port == 8750
    assert str(settings.signing_key_path) == "/etc/rexec/signing/signing.key"
    assert settings.broker_public_key == env["REXEC_BROKER_PUBLIC_KEY"]
    k8s = KubernetesSettings.from_env(env)
    assert k8s.release == "rexec"
    assert k8s.broker_namespace == NAMESPACE
    broker_pod = find(objects, "Deployment", "rexec-broker")["spec"]["template"]["metadata"]
    assert dict(k8s.broker_pod_labels).items() <= broker_pod["labels"].items()
    if which == "full":
        assert k8s.profile == "large" and k8s.worker_profile.memory_limit == "16Gi"
        assert k8s.profiles["gpu-small"].cpu_request == "2"
        assert k8s.profiles["gpu-small"].memory_limit == "2Gi"  # from the default profile
        assert k8s.worker_profile.ephemeral_storage_limit == "32Gi"
        assert k8s.profiles["gpu-small"].ephemeral_storage_request == "2Gi"
        assert (k8s.tmp_volume_size, k8s.home_volume_size) == ("3Gi", "1Gi")
        assert k8s.pod_security_version == "v1.30"
        assert settings.max_workers_per_user == 3
        assert settings.max_body_bytes == 65536
        assert (settings.worker_credential_ttl, settings.worker_hung_after) == (7200, 45)
        assert k8s.namespace_prefix == "rx-u-"
        assert k8s.package_index_cidrs == ("0.0.0.0/0",)
        assert k8s.dns_namespace_labels == {"rexec.dev/dns": "true"}
        assert k8s.dns_pod_labels == {"app": "coredns", "tier": "dns"}
        assert k8s.dns_cidrs == ("169.254.20.10/32",)
        assert k8s.worker_image == "registry.example.org/rexec/worker:py3.11-test"
        assert settings.auth.allowed_groups == ("rexec-users", "admins")
        assert settings.auth.api_method == "POST"
        assert settings.env_allow_options is True and settings.env_allow_urls is False
        assert str(settings.auth.token_file) == "/etc/rexec/tokens/tokens.json"
    else:
        assert k8s.namespace_prefix == "rexec-u-"
        assert k8s.worker_image == "ghcr.io/sci-ndp/rexec-worker:0.1.0"
        assert k8s.dns_namespace == "kube-system" and k8s.dns_namespace_labels == {}
        assert k8s.pod_security_version == "latest"
        assert settings.max_workers_per_user == 8
        assert (settings.worker_credential_ttl, settings.worker_hung_after) == (43200, 30)
        assert k8s.worker_profile.resources()["limits"] == {
            "cpu": "2",
            "memory": "4Gi",
            "ephemeral-storage": "10Gi",
        }
        assert k8s.dns_pod_labels == {"k8s-app": "kube-dns"}
        assert settings.env_allow_options is False and settings.env_allow_urls is False


def test_spawner_command_line_reads_the_rendered_environment(
    helm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `rexec spawner` in the pod really builds: options absent, settings from env."""
    from rexec_spawner.cli import make_parser, settings_from_args

    spawner = container(find(render(helm), "Deployment", "rexec-spawner"))
    for name in list(os.environ):
        if name.startswith(("REXEC_", "AUTH_")):
            monkeypatch.delenv(name)
    for name, value in resolved_env(spawner).items():
        monkeypatch.setenv(name, value)
    settings = settings_from_args(make_parser("rexec spawner").parse_args(spawner["args"]))
    assert settings.backend == "kubernetes"
    assert (settings.host, settings.port) == ("0.0.0.0", 8750)
    assert str(settings.signing_key_path) == "/etc/rexec/signing/signing.key"
    assert str(settings.data_dir) == "/var/lib/rexec/stack"
    assert settings.broker_backend_url.startswith("tcp://rexec-broker-internal-ip.")
    assert settings.broker_public_key


@pytest.mark.parametrize("sets", [[], PLAINTEXT], ids=["curve", "plaintext"])
def test_broker_command_line_parses_and_binds_safely(
    helm: Path, sets: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from rexec.auth_options import auth_settings_from_args
    from rexec_broker.command import make_parser

    objects = render(helm, sets=sets)
    broker = container(find(objects, "Deployment", "rexec-broker"))
    assert broker["command"] == ["rexec", "broker"]
    env = env_of(broker)
    for name in list(os.environ):
        if name.startswith(("REXEC_", "AUTH_")):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = make_parser("rexec broker").parse_args(broker["args"])
    assert args.allow_plaintext is (sets == PLAINTEXT)
    assert (args.frontend, args.backend) == ("tcp://0.0.0.0:5559", "tcp://0.0.0.0:5560")
    assert str(args.signing_key) == "/etc/rexec/signing/signing.key"
    assert auth_settings_from_args(args).api_method == "GET"
    if sets == PLAINTEXT:
        assert "REXEC_CURVE_SECRET_KEY_FILE" not in env
        spawner = env_of(container(find(objects, "Deployment", "rexec-spawner")))
        assert "REXEC_BROKER_PUBLIC_KEY" not in spawner
        assert not any(o["kind"] == "Job" for o in objects)
    else:
        assert str(args.curve_secret_key) == "/etc/rexec/curve/broker.key"
        mounts = {m["mountPath"]: m["name"] for m in broker["volumeMounts"]}
        assert mounts["/etc/rexec/curve"] == "curve"


@pytest.mark.parametrize("which", sorted(VALUE_SETS))
def test_broker_connection_limits_come_from_the_values(
    helm: Path, which: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """broker.connections.* reach the broker as the limits its command line builds."""
    from rexec_broker.command import connection_limits, make_parser
    from rexec_broker.connections import ConnectionLimits

    broker = container(find(render(helm, VALUE_SETS[which][0]), "Deployment", "rexec-broker"))
    for name in list(os.environ):
        if name.startswith(("REXEC_", "AUTH_")):
            monkeypatch.delenv(name)
    for name, value in env_of(broker).items():
        monkeypatch.setenv(name, value)
    limits = connection_limits(make_parser("rexec broker").parse_args(broker["args"]))
    limits.check()
    if which == "full":
        assert (limits.speak_within, limits.greet_within) == (2.5, 5.5)
        assert (limits.per_address, limits.total) == (32, 1024)
        assert (limits.rate, limits.burst, limits.total_rate, limits.total_burst) == (
            16.5,
            64,
            512.5,
            2048,
        )
    else:  # the chart's defaults are the broker's own
        assert limits == ConnectionLimits()


# --- secrets -----------------------------------------------------------------------------------


def test_signing_key_is_generated_as_hex_and_mounted(default_objects: list[dict[str, Any]]) -> None:
    import base64

    secret = find(default_objects, "Secret", "rexec-signing-key")
    key = base64.b64decode(secret["data"]["signing.key"]).decode()
    assert re.fullmatch(r"[0-9a-f]{64}", key)
    for name in ("rexec-broker", "rexec-spawner"):
        spec = find(default_objects, "Deployment", name)["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["signing-key"]["secret"]["secretName"] == "rexec-signing-key"
        assert env_of(container({"spec": {"template": {"spec": spec}}}))[
            "REXEC_SIGNING_KEY_FILE"
        ] == ("/etc/rexec/signing/signing.key")


def test_existing_secrets_are_used_and_nothing_is_generated(
    full_objects: list[dict[str, Any]],
) -> None:
    assert not [o for o in full_objects if o["kind"] in ("Secret", "Job", "Role")]
    spawner = container(find(full_objects, "Deployment", "rexec-spawner"))
    ref = env_of(spawner)["REXEC_BROKER_PUBLIC_KEY"]["secretKeyRef"]
    assert ref == {"name": "rexec-curve-provided", "key": "broker.pub"}
    broker = find(full_objects, "Deployment", "rexec-broker")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in broker["volumes"]}
    assert volumes["curve"]["secret"]["secretName"] == "rexec-curve-provided"
    assert volumes["signing-key"]["secret"]["secretName"] == "rexec-signing-provided"
    assert volumes["token-file"]["secret"]["secretName"] == "rexec-tokens"


def test_key_generation_job_runs_the_shipped_script(default_objects: list[dict[str, Any]]) -> None:
    [job] = [o for o in default_objects if o["kind"] == "Job"]
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "rexec-curve-keygen"
    config = find(default_objects, "ConfigMap", "rexec-curve-keygen")
    script = (CHART / "files" / "curve-keygen.py").read_text()
    assert config["data"]["curve-keygen.py"].strip() == script.strip()
    env = env_of(pod["containers"][0])
    assert env["REXEC_CURVE_SECRET"] == "rexec-curve"
    assert "ttlSecondsAfterFinished" in job["spec"]


def test_key_generation_job_is_renamed_when_its_pod_would_change(helm: Path) -> None:
    """A Job's pod template is immutable: `helm upgrade` with a new image must create a new Job
    (its name carries a hash), while an unchanged upgrade keeps the same one."""

    def job_name(sets: list[str]) -> str:
        [job] = [o for o in render(helm, sets=sets) if o["kind"] == "Job"]
        return str(job["metadata"]["name"])

    same = job_name([])
    assert same == job_name([]) and same.startswith("rexec-curve-keygen-")
    assert job_name(["broker.image.tag=0.2.0"]) != same


# --- network policies and ingress --------------------------------------------------------------


def ingress_rules(policy: dict[str, Any]) -> dict[int, list[dict[str, Any]] | None]:
    return {rule["ports"][0]["port"]: rule.get("from") for rule in policy["spec"]["ingress"]}


def test_broker_accepts_workers_only_from_this_releases_worker_namespaces(
    default_objects: list[dict[str, Any]],
) -> None:
    policy = find(default_objects, "NetworkPolicy", "rexec-broker")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    rules = ingress_rules(policy)
    assert set(rules) == {5559, 5560}
    assert rules[5559] is None, "clients come from anywhere by default (0.0.0.0/0)"
    [peer] = rules[5560] or []
    assert peer["namespaceSelector"]["matchLabels"] == {
        "app.kubernetes.io/managed-by": "rexec-spawner",
        "rexec.dev/release": "rexec",
    }
    assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "worker"


def test_broker_policy_selects_the_namespaces_and_pods_the_backend_creates(
    default_objects: list[dict[str, Any]],
) -> None:
    from rexec_spawner.backends.kubernetes import naming, objects

    rules = ingress_rules(find(default_objects, "NetworkPolicy", "rexec-broker"))
    [peer] = rules[5560] or []
    user = "Alice@example.org"
    namespace = objects.make_namespace("rexec", user, naming.make_namespace_name("rexec-u-", user))
    assert (
        peer["namespaceSelector"]["matchLabels"].items() <= namespace["metadata"]["labels"].items()
    )
    worker = naming.worker_labels("rexec", user, "default")
    assert peer["podSelector"]["matchLabels"].items() <= worker.items()
    # Another release's workers are not admitted.
    other = naming.worker_labels("other", user, "default")
    assert not peer["podSelector"]["matchLabels"].items() <= other.items()


def test_narrowed_client_ranges_still_admit_the_spawner(full_objects: list[dict[str, Any]]) -> None:
    rules = ingress_rules(find(full_objects, "NetworkPolicy", "rexec-broker"))
    peers = rules[5559] or []
    cidrs = [p["ipBlock"]["cidr"] for p in peers if "ipBlock" in p]
    assert cidrs == ["192.0.2.0/24", "198.51.100.0/24"]
    selectors = [p["podSelector"]["matchLabels"] for p in peers if "podSelector" in p]
    assert {"app.kubernetes.io/component": "spawner"}.items() <= selectors[0].items()
    assert any("namespaceSelector" in p for p in peers)
    spawner = ingress_rules(find(full_objects, "NetworkPolicy", "rexec-spawner"))
    assert set(spawner) == {8750} and spawner[8750]


def test_ingress_routes_to_the_spawner(full_objects: list[dict[str, Any]]) -> None:
    ingress = find(full_objects, "Ingress", "rexec-spawner")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    [rule] = ingress["spec"]["rules"]
    assert rule["host"] == "rexec.example.org"
    [path] = rule["http"]["paths"]
    assert path["backend"]["service"] == {"name": "rexec-spawner", "port": {"name": "http"}}
    assert ingress["spec"]["tls"][0]["secretName"] == "rexec-tls"


@pytest.mark.parametrize(
    ("sets", "warning"),
    [
        ([], "no identity source is configured"),
        ([*PLAINTEXT, "authApiUrl=https://idp.example.org/i"], "CurveZMQ is off"),
    ],
)
def test_notes_warn_about_an_unsafe_or_unusable_release(
    helm: Path, sets: list[str], warning: str
) -> None:
    args = ["install", "rexec", str(CHART), "--dry-run=client", "--namespace", NAMESPACE]
    for item in sets:
        args += ["--set", item]
    notes = run_helm(helm, args).stdout.split("NOTES:", 1)[1]
    assert warning in notes
    assert "rollout status deploy/rexec-broker" in notes
    safe = run_helm(
        helm,
        [*args, "--set", "authApiUrl=https://idp.example.org/i", "--set", "curve.enabled=true"],
    ).stdout
    assert "WARNING" not in safe.split("NOTES:", 1)[1]


def test_ingress_is_off_by_default(default_objects: list[dict[str, Any]]) -> None:
    assert "Ingress" not in {o["kind"] for o in default_objects}

"""Our manifests against the pinned sidecars' own sources (tests/deploy/sidecar_facts.yaml
records them, with where each fact was read): offline, in CI. Every flag we pass exists
at the pinned version and is not deprecated; every image is the pinned version; every
RBAC rule granted to a sidecar is within what its upstream manifests grant."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.deploy import tools
from tests.deploy.test_wiring import containers, granted, one

FACTS = yaml.safe_load((Path(__file__).parent / "sidecar_facts.yaml").read_text())
# The renderings that keep the pinned images (the "everything" ones rename them).
RENDERINGS = [r for r in tools.RENDERINGS if "everything" not in r]
# Which sidecar needs each of our RBAC objects (by the suffix of its name).
ROLE_OWNERS = {"provisioner": "csi-provisioner", "attacher": "csi-attacher",
               "snapshotter": "csi-snapshotter", "resizer": "csi-resizer"}


@pytest.fixture(params=RENDERINGS)
def docs(request):
    return tools.render(request.param)


def _flag_names(container: dict) -> list[str]:
    return [a[2:].split("=", 1)[0] for a in container.get("args", []) if a.startswith("--")]


def test_facts_cover_every_sidecar_we_run() -> None:
    names = set()
    for rendering in RENDERINGS:
        names |= set(containers(tools.render(rendering))) - {"csi-py"}
    assert names == set(FACTS)
    for name, fact in FACTS.items():
        assert set(fact["deprecated"]) <= set(fact["flags"]), name
        assert fact["source"] and fact["version"].startswith("v"), name


def test_sidecar_images_are_the_versions_the_facts_describe(docs) -> None:
    for name, c in containers(docs).items():
        if name in FACTS:
            assert c["image"] == f"{FACTS[name]['image']}:{FACTS[name]['version']}", name


def test_every_sidecar_flag_exists_and_is_not_deprecated(docs) -> None:
    problems = []
    for name, c in containers(docs).items():
        if name not in FACTS:
            continue
        fact = FACTS[name]
        for flag in _flag_names(c):
            if flag not in fact["flags"]:
                problems.append(f"{name} {fact['version']} has no --{flag}")
            elif flag in fact["deprecated"]:
                problems.append(f"{name} {fact['version']}: --{flag} is deprecated")
        for probe in ("livenessProbe", "readinessProbe"):
            command = c.get(probe, {}).get("exec", {}).get("command", [])
            problems += [f"{name} {probe} runs {arg}" for arg in command
                         if arg.startswith("--") and arg[2:].split("=")[0] in fact["deprecated"]]
    assert not problems, "\n".join(problems)


def test_sidecars_with_an_http_endpoint_are_probed_on_it(docs) -> None:
    """The health endpoints --http-endpoint serves: the registrar's and livenessprobe's
    /healthz, and /healthz/leader-election of a sidecar that elects a leader."""
    for name, c in containers(docs).items():
        if name not in FACTS or name == "liveness-probe":
            continue
        flags = dict(a[2:].split("=", 1) for a in c.get("args", []) if "=" in a)
        assert "http-endpoint" in flags, f"{name} exposes no --http-endpoint"
        port = int(flags["http-endpoint"].rsplit(":", 1)[1])
        names = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        assert port in names.values(), f"{name}: port {port} not declared"
        probe = c.get("livenessProbe", {}).get("httpGet")
        if name == "node-driver-registrar":
            assert probe and probe["path"] == "/healthz"
        elif flags.get("leader-election") == "true":
            assert probe and probe["path"] == "/healthz/leader-election", name
        else:
            assert probe is None, f"{name}: no leader election, so no such health check"
        if probe:
            assert names.get(probe["port"], probe["port"]) == port


def _expand(rules: list[dict]) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in rules for g in rule["apiGroups"]
            for r in rule["resources"] for v in rule["verbs"]}


def test_rbac_is_within_what_the_sidecars_upstream_manifests_grant(docs) -> None:
    """Each of our Roles/ClusterRoles for a sidecar grants a subset of the rules in the
    sidecar's own RBAC example at the pinned version."""
    problems = []
    for d in docs:
        if d["kind"] not in ("ClusterRole", "Role"):
            continue
        suffix = d["metadata"]["name"].rsplit("-", 1)[-1]
        if suffix == "election":  # <name>-leader-election: the upstream lease rules
            allowed = set().union(*(_expand(FACTS[s]["namespacedRules"])
                                    for s in ROLE_OWNERS.values()))
            allowed = {a for a in allowed if a[1] == "leases"}
        else:
            owner = FACTS[ROLE_OWNERS[suffix]]
            key = "clusterRules" if d["kind"] == "ClusterRole" else "namespacedRules"
            allowed = _expand(owner[key])
            if d["kind"] == "ClusterRole":
                allowed |= _expand(owner.get("codeRules", []))
        extra = sorted(_expand(d["rules"]) - allowed)
        if extra:
            problems.append(f"{d['kind']} {d['metadata']['name']}: {extra}")
    assert not problems, "granted beyond the sidecars' upstream RBAC:\n" + "\n".join(problems)


def test_the_excess_grants_the_issue_found_are_gone(docs) -> None:
    ds = one(docs, "DaemonSet")
    sa = ds["spec"]["template"]["spec"]["serviceAccountName"]
    cluster, _ = granted(docs, sa, ds["metadata"]["namespace"])
    for grant in (("snapshot.storage.k8s.io", "volumesnapshots", "patch"),
                  ("storage.k8s.io", "volumeattributesclasses", "list")
                  if "csi-resizer" not in containers(docs) else None,
                  ("snapshot.storage.k8s.io", "volumesnapshotcontents", "create")):
        if grant:
            assert grant not in cluster, grant

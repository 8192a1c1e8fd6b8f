"""The kopf peer of `hack/bench kube`: on each Capstan Deployment created, an apps/v1
Deployment owned by it (the same child Capstan makes, reduced to what the benchmark checks),
with the official kubernetes client, as kopf's documentation does it."""
import kopf
import kubernetes


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_):
    settings.posting.enabled = True  # events, as Capstan records them
    kubernetes.config.load_kube_config()


@kopf.on.create("capstan.dev", "v1alpha1", "deployments")
def create(spec, name, namespace, **_):
    labels = {"app.kubernetes.io/managed-by": "kopf-bench", "capstan.dev/deployment": name}
    child = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": spec.get("replicas", 1),
            "selector": {"matchLabels": {"capstan.dev/deployment": name}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "app", "image": f"ghcr.io/example/{spec['application']}:{spec['version']}"}]},
            },
        },
    }
    kopf.adopt(child)
    kubernetes.client.AppsV1Api().create_namespaced_deployment(namespace, child)
    return {"child": name}

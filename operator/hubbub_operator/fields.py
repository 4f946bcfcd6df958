"""The RealtimeService's spec, field by field: the one table the CRD schema, `kubectl explain`,
docs/operator.md's reference and the builders' defaults come from.

Two parts are not written here but derived (hubbub_operator.derived): `settings`, from hubbub's own
settings model (every setting the operator does not decide itself), and
`monitoring.prometheusRule.thresholds`, from the alert rules' `Thresholds` dataclass.
"""

from __future__ import annotations

from typing import Final

from hubbub import __version__
from hubbub_operator import derived
from hubbub_operator.field import Field, Rule, boolean, integer, native, obj, secret_ref, string, string_map, strings

DEFAULT_IMAGE: Final = "ghcr.io/hubbub-dev/hubbub"
DEFAULT_REDIS_IMAGE: Final = "docker.io/valkey/valkey:8.1"
#: A Prometheus duration (prometheus-operator's pattern for `interval`).
DURATION: Final = r"^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
#: A DNS-1123 subdomain: Kubernetes object names, host names.
DNS_NAME: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


def _one_of(*names: str) -> str:
    return "[" + ", ".join(f"has(self.{n})" for n in names) + "].filter(x, x).size() == 1"


ROOT_RULES: Final = (
    Rule(
        "!has(self.redis) || self.redis.mode != 'none' || (has(self.replicas) && self.replicas.max == 1)",
        "redis.mode none (the embedded in-memory broker) serves a single pod: set replicas.max to 1, "
        "or use managed or external Redis",
    ),
)

SPEC: Final[tuple[Field, ...]] = (
    # -- the pods ------------------------------------------------------------------------------------
    obj("image", "The hubbub container image. Its `hubbub` command must be on PATH.", default={}),
    string("image.repository", "Image repository.", default=DEFAULT_IMAGE),
    string("image.tag", "Image tag (the operator's own version by default).", default=__version__, max_length=128),
    string(
        "image.pullPolicy",
        "When the kubelet pulls the image.",
        default="IfNotPresent",
        enum=("Always", "IfNotPresent", "Never"),
    ),
    native("imagePullSecrets", "Secrets for pulling the image (`[{name: ...}]`), as in a pod spec.", "array"),
    native(
        "resources",
        "CPU and memory requests and limits of the hubbub container (a Kubernetes ResourceRequirements). "
        "Set requests: the scheduler and the CPU metric of autoscaling need them.",
        "object",
    ),
    string_map("nodeSelector", "Node labels the pods must match (pod spec `nodeSelector`)."),
    native("tolerations", "Taints the pods tolerate (pod spec `tolerations`).", "array"),
    native("affinity", "Pod affinity and anti-affinity (pod spec `affinity`).", "object"),
    native(
        "topologySpreadConstraints",
        "How pods spread over zones and nodes (pod spec `topologySpreadConstraints`); give `labelSelector` "
        "or `matchLabelKeys: [pod-template-hash]`; the pods carry the labels `app.kubernetes.io/instance: <name>` "
        "and `app.kubernetes.io/component: server`.",
        "array",
    ),
    string_map("podAnnotations", "Extra annotations on the pods."),
    string_map("podLabels", "Extra labels on the pods (the operator's own labels win)."),
    obj(
        "replicas",
        "How many hubbub pods run. With autoscaling, the autoscaler moves between min and max; without, min pods run.",
        Rule("self.min <= self.max", "replicas.min must not exceed replicas.max"),
        default={},
    ),
    integer("replicas.min", "Fewest pods.", default=2, minimum=1, maximum=1000),
    integer("replicas.max", "Most pods.", default=10, minimum=1, maximum=1000),
    obj(
        "autoscaling",
        "Autoscaling on open WebSocket connections per pod (the `hubbub_connections` gauge).",
        Rule(
            "self.provider != 'keda' || has(self.keda)",
            "autoscaling.provider keda needs keda.serverAddress (the Prometheus that KEDA queries)",
        ),
        default={},
    ),
    string(
        "autoscaling.provider",
        "`hpa`: a HorizontalPodAutoscaler on the Pods metric `hubbub_connections` (served by a custom-metrics "
        "adapter such as prometheus-adapter); `keda`: a KEDA ScaledObject with a Prometheus trigger; `none`: "
        "replicas.min pods, no autoscaler.",
        default="hpa",
        enum=("hpa", "keda", "none"),
    ),
    integer(
        "autoscaling.targetConnectionsPerPod",
        "Average open connections per pod the autoscaler aims at. Keep it well below the setting "
        "max_connections: a new pod only gets new connections.",
        default=1000,
        minimum=1,
    ),
    integer(
        "autoscaling.targetCPUUtilization",
        "Also scale on CPU: average utilization (percent of the CPU request) to aim at. Unset: connections only.",
        minimum=1,
        maximum=100,
    ),
    integer(
        "autoscaling.scaleDownStabilizationSeconds",
        "Seconds of lower recommendations before scaling down. Connection counts fall only as clients leave, "
        "and each removed pod makes its clients reconnect: scale down slowly.",
        default=900,
        minimum=0,
        maximum=3600,
    ),
    obj("autoscaling.keda", "KEDA's Prometheus trigger (provider keda)."),
    string(
        "autoscaling.keda.serverAddress",
        "URL of the Prometheus KEDA queries, e.g. `http://prometheus-operated.monitoring.svc:9090`.",
        required=True,
        pattern=r"^https?://",
    ),
    obj(
        "rebalance",
        "Rebalancing after a scale-out: new pods start empty while the old ones keep their long-lived connections, "
        "so once the Deployment is rolled out and every pod is Ready the operator asks the most loaded pods "
        "(`POST /api/shed`) to close their excess with 1012 (reason `rebalancing`); their clients reconnect "
        "through the Service and recover what they missed.",
        default={},
    ),
    boolean("rebalance.enabled", "Rebalance the pods' connections.", default=True),
    integer(
        "rebalance.tolerance",
        "Percent of the mean connections per pod that a pod may be above or below it (and at least one "
        "connection) before the pods above shed down to the mean.",
        default=20,
        minimum=0,
        maximum=100,
    ),
    integer(
        "rebalance.period",
        "Seconds over which a pod spreads the closes it sheds (its clients' reconnects with them). The operator "
        "looks again no sooner than this plus 10 s.",
        default=10,
        minimum=1,
        maximum=600,
    ),
    # -- the service's own settings --------------------------------------------------------------------
    *derived.settings_fields("settings"),
    # -- auth ---------------------------------------------------------------------------------------------
    obj(
        "auth",
        "How clients' tokens (JWT) are checked, and the HTTP API's key.",
        Rule(
            _one_of("jwtSecretRef", "publicKeySecretRef", "jwksURL"),
            "auth needs exactly one of jwtSecretRef (an HMAC secret), publicKeySecretRef (a PEM public key) or jwksURL",
        ),
        required=True,
    ),
    *secret_ref("auth.jwtSecretRef", "the HMAC secret (at least 32 bytes) of HS256/384/512 tokens", "jwt-secret"),
    *secret_ref(
        "auth.publicKeySecretRef", "the PEM public key (RSA, EC P-256 or Ed25519) of signed tokens", "public-key.pem"
    ),
    string(
        "auth.jwksURL",
        "JWKS URL of the identity provider; keys are cached and refetched on rotation.",
        pattern=r"^https?://",
    ),
    string("auth.audience", "Required `aud` claim."),
    string("auth.issuer", "Required `iss` claim."),
    *secret_ref(
        "auth.apiKeySecretRef",
        "the bearer key of the HTTP API (publishing from back ends). Unset: the operator generates one in the "
        "Secret `<name>-api-key`",
        "api-key",
    ),
    # -- Redis -----------------------------------------------------------------------------------------
    obj(
        "redis",
        "The Redis that connects the pods (publications, presence, history). Exactly one mode.",
        Rule(
            "self.mode == 'external' || !has(self.external)",
            "redis.external is set but redis.mode is not external: pick one Redis mode",
        ),
        Rule("self.mode != 'external' || has(self.external)", "redis.mode external needs redis.external"),
        Rule(
            "self.mode == 'managed' || !has(self.managed)",
            "redis.managed is set but redis.mode is not managed: pick one Redis mode",
        ),
        default={},
    ),
    string(
        "redis.mode",
        "`managed`: the operator runs a single Redis (a StatefulSet) with a generated password; `external`: "
        "your Redis or Sentinel; `none`: each pod's embedded in-memory broker, for a single pod only.",
        default="managed",
        enum=("managed", "external", "none"),
    ),
    obj("redis.managed", "The managed Redis (mode managed)."),
    string(
        "redis.managed.image",
        "Redis-compatible server image whose entrypoint starts the server when given a `.conf` file (as the "
        "official valkey and redis images do).",
        default=DEFAULT_REDIS_IMAGE,
    ),
    obj("redis.managed.persistence", "Keep Redis's data on a PersistentVolumeClaim (append-only file)."),
    boolean(
        "redis.managed.persistence.enabled",
        "Off: the data lives in memory and is lost when the Redis pod restarts (clients then recover what they "
        "can; history is gone).",
        default=False,
    ),
    string("redis.managed.persistence.size", "Size of the volume.", default="1Gi", max_length=64),
    string("redis.managed.persistence.storageClassName", "StorageClass of the volume (unset: the cluster's default)."),
    native("redis.managed.resources", "CPU and memory of the Redis container (a ResourceRequirements).", "object"),
    obj(
        "redis.external",
        "Your own Redis (mode external).",
        Rule(
            "has(self.urlSecretRef) || has(self.sentinels) || has(self.cluster)",
            "redis.external needs urlSecretRef (a Secret holding the redis:// URL), sentinels or cluster",
        ),
        Rule(
            "!has(self.sentinels) || !has(self.cluster)",
            "redis.external takes sentinels or cluster, not both",
        ),
        Rule(
            "!has(self.tls) || has(self.tls.caSecretRef)",
            "redis.external.tls needs caSecretRef: the Secret holding the CA that signed Redis's certificate",
        ),
        Rule(
            "!has(self.tls) || has(self.urlSecretRef)",
            "redis.external.tls needs urlSecretRef: TLS is turned on by its rediss:// URL",
        ),
    ),
    *secret_ref(
        "redis.external.urlSecretRef",
        "the Redis URL (`redis://` or `rediss://`, user and password in it); with sentinels it supplies "
        "credentials, db and TLS, with cluster credentials and TLS",
        "url",
    ),
    obj("redis.external.tls", "Trust a private CA for `rediss://` (the URL must then have no query string)."),
    *secret_ref("redis.external.tls.caSecretRef", "the PEM CA certificate", "ca.crt"),
    obj("redis.external.sentinels", "Find the Redis master through Sentinel."),
    strings(
        "redis.external.sentinels.addresses",
        "Sentinel addresses, `host:port`.",
        min_items=1,
        max_items=16,
        required=True,
    ),
    string("redis.external.sentinels.service", "The Sentinel service name of the master.", default="mymaster"),
    obj(
        "redis.external.cluster",
        "A Redis Cluster (Redis 7 or later): rooms are spread over its masters by hash slot, so the publish rate "
        "grows with the masters.",
    ),
    strings(
        "redis.external.cluster.nodes",
        "Seed addresses, `host:port`: any of the cluster's nodes (the others are discovered).",
        min_items=1,
        max_items=64,
        required=True,
    ),
    # -- exposure -------------------------------------------------------------------------------------
    obj(
        "exposure",
        "How clients reach the pods: the Service, and an Ingress or a Gateway API HTTPRoute.",
        Rule(
            "!(has(self.ingress) && self.ingress.enabled && has(self.gateway) && self.gateway.enabled)",
            "exposure.ingress and exposure.gateway are mutually exclusive: enable one",
        ),
        Rule(
            "self.sessionAffinity != 'Cookie' || (has(self.ingress) && self.ingress.enabled) || "
            "(has(self.gateway) && self.gateway.enabled)",
            "exposure.sessionAffinity Cookie needs exposure.ingress or exposure.gateway (cookies are set by the proxy)",
        ),
        default={},
    ),
    string(
        "exposure.sessionAffinity",
        "Send a client back to the same pod: `None` (hubbub keeps rooms, presence and history in Redis, so any "
        "pod serves a reconnect), `Cookie` (the Ingress's or HTTPRoute's cookie; needs one of them) or "
        "`ClientIP` (the Service's, for L4 exposure without a proxy).",
        default="None",
        enum=("None", "Cookie", "ClientIP"),
    ),
    obj("exposure.service", "The Service in front of the pods, named like the RealtimeService.", default={}),
    string(
        "exposure.service.type", "Service type.", default="ClusterIP", enum=("ClusterIP", "NodePort", "LoadBalancer")
    ),
    integer("exposure.service.port", "Port of the Service.", default=80, minimum=1, maximum=65535),
    string_map("exposure.service.annotations", "Annotations on the Service (load balancer options)."),
    obj(
        "exposure.ingress",
        "An Ingress (ingress-nginx annotations for WebSockets: hour-long proxy timeouts, cookie affinity).",
        Rule(
            "!has(self.tls) || has(self.tls.secretName)",
            "exposure.ingress.tls needs secretName: the Secret holding the certificate",
        ),
        Rule("!has(self.tls) || has(self.host)", "exposure.ingress.tls needs host: the name the certificate is for"),
    ),
    boolean(
        "exposure.ingress.enabled", "Create the Ingress (false: keep the section, drop the Ingress).", default=True
    ),
    string("exposure.ingress.className", "IngressClass name (unset: the cluster's default class)."),
    string("exposure.ingress.host", "Host name clients connect to.", pattern=DNS_NAME, max_length=253),
    string("exposure.ingress.path", "Path prefix routed to hubbub.", default="/", pattern="^/"),
    obj("exposure.ingress.tls", "Terminate TLS at the Ingress."),
    string("exposure.ingress.tls.secretName", "The Secret (kubernetes.io/tls) with the certificate.", max_length=253),
    string_map("exposure.ingress.annotations", "Extra Ingress annotations; they override the operator's."),
    obj(
        "exposure.gateway",
        "A Gateway API HTTPRoute attached to your Gateway (created when the Gateway API CRDs are installed).",
        Rule(
            "!self.enabled || (has(self.parentRefs) && size(self.parentRefs) > 0)",
            "exposure.gateway needs parentRefs: the Gateway to attach the route to",
        ),
    ),
    boolean("exposure.gateway.enabled", "Create the HTTPRoute.", default=True),
    Field(
        "exposure.gateway.parentRefs",
        "array",
        "Gateways (and listeners) the route attaches to.",
        max_items=32,
    ),
    obj("exposure.gateway.parentRefs[]", "One Gateway (listener)."),
    string("exposure.gateway.parentRefs[].name", "Gateway name.", required=True, max_length=253),
    string("exposure.gateway.parentRefs[].namespace", "Gateway namespace (unset: this namespace).", max_length=63),
    string("exposure.gateway.parentRefs[].sectionName", "Listener name within the Gateway.", max_length=253),
    strings("exposure.gateway.hostnames", "Host names the route answers.", max_items=16),
    string("exposure.gateway.path", "Path prefix routed to hubbub.", default="/", pattern="^/"),
    # -- monitoring ------------------------------------------------------------------------------------
    obj(
        "monitoring",
        "Prometheus Operator objects and Grafana dashboards, each created when enabled and its CRD exists "
        "(otherwise status.skipped says why).",
    ),
    obj("monitoring.serviceMonitor", "A ServiceMonitor scraping every pod's `/metrics`."),
    boolean("monitoring.serviceMonitor.enabled", "Create it.", default=True),
    string("monitoring.serviceMonitor.interval", "Scrape interval.", default="30s", pattern=DURATION, max_length=32),
    string_map(
        "monitoring.serviceMonitor.labels",
        "Extra labels, to match your Prometheus's serviceMonitorSelector "
        "(kube-prometheus-stack: `release: <its release>`).",
    ),
    obj("monitoring.prometheusRule", "A PrometheusRule with hubbub's alerts (docs/runbooks.md) for these pods."),
    boolean("monitoring.prometheusRule.enabled", "Create it.", default=True),
    string_map("monitoring.prometheusRule.labels", "Extra labels, to match your Prometheus's ruleSelector."),
    string_map("monitoring.prometheusRule.alertLabels", "Labels added to every alert (routing: team, cluster)."),
    string(
        "monitoring.prometheusRule.runbookBaseURL",
        "Where the alerts' runbook links point (your copy of docs/runbooks.md).",
        pattern=r"^https?://",
        shown_default=derived.DEFAULT_RUNBOOK_BASE_URL,
    ),
    *derived.threshold_fields("monitoring.prometheusRule.thresholds"),
    obj("monitoring.dashboards", "hubbub's Grafana dashboards in a ConfigMap for Grafana's dashboard sidecar."),
    boolean("monitoring.dashboards.enabled", "Create it.", default=True),
    string_map(
        "monitoring.dashboards.labels",
        'Extra labels on the ConfigMap (it always has `grafana_dashboard: "1"`, the sidecar\'s default).',
    ),
    string_map(
        "monitoring.dashboards.annotations",
        "Annotations on the ConfigMap (e.g. the sidecar's folder annotation, `grafana_folder`).",
    ),
)

#!/usr/bin/env python3
"""Writes the conformance corpus (cases/<name>/...) and its expected
outputs from `kubectl kustomize` (kustomize v5.5.0).

Each case is a directory tree; `build` (if present) names the directory to
build (default: the case directory). Expected output goes to
`expected.yaml`; a case kustomize rejects gets `expected.err` holding
kubectl's message, and `error.txt` (written here, by hand) the words
terrace's own message must contain.

    python3 crates/terrace-kustomize/tests/conformance/make_cases.py
"""
import os, re, shutil, subprocess, sys, textwrap

HERE = os.path.dirname(os.path.abspath(__file__))
CASES = os.path.join(HERE, "cases")

DEPLOY = """apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 1
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: nginx:1.0
        ports: [{containerPort: 80}]
"""
SERVICE = """apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports: [{port: 80}]
"""
CM = """apiVersion: v1
kind: ConfigMap
metadata:
  name: plain
data:
  a: "1"
"""

cases = {}


def case(name, files, build=None, error=None):
    cases[name] = (files, build, error)


def k(text):
    return textwrap.dedent(text).lstrip()


case("resources-single", {"kustomization.yaml": "resources: [d.yaml]\n", "d.yaml": DEPLOY})
case("resources-multi-doc", {"kustomization.yaml": "resources: [all.yaml]\n", "all.yaml": DEPLOY + "---\n" + SERVICE + "---\n" + CM})
case("resources-directory", {
    "base/kustomization.yaml": "resources: [d.yaml, s.yaml]\n", "base/d.yaml": DEPLOY, "base/s.yaml": SERVICE,
    "overlay/kustomization.yaml": "resources: [../base, cm.yaml]\n", "overlay/cm.yaml": CM,
}, build="overlay")
case("bases-deprecated", {
    "base/kustomization.yaml": "resources: [d.yaml]\n", "base/d.yaml": DEPLOY,
    "overlay/kustomization.yaml": "bases: [../base]\n",
}, build="overlay")
case("resources-list-kind", {"kustomization.yaml": "resources: [l.yaml]\n", "l.yaml": k("""
    apiVersion: v1
    kind: List
    items:
    - apiVersion: v1
      kind: ConfigMap
      metadata: {name: one}
    - apiVersion: v1
      kind: ConfigMap
      metadata: {name: two}
    """)})
case("namespace-basic", {"kustomization.yaml": "namespace: prod\nresources: [all.yaml]\n", "all.yaml": DEPLOY + "---\n" + SERVICE + "---\n" + CM})
case("namespace-cluster-scoped", {"kustomization.yaml": "namespace: prod\nresources: [r.yaml]\n", "r.yaml": k("""
    apiVersion: rbac.authorization.k8s.io/v1
    kind: ClusterRole
    metadata: {name: reader}
    ---
    apiVersion: v1
    kind: Namespace
    metadata: {name: prod}
    ---
    apiVersion: storage.k8s.io/v1
    kind: StorageClass
    metadata: {name: fast}
    provisioner: x
    ---
    apiVersion: v1
    kind: ServiceAccount
    metadata: {name: sa}
    """)})
case("namespace-overrides-existing", {"kustomization.yaml": "namespace: b\nresources: [c.yaml]\n", "c.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n  namespace: a\n"})
case("prefix-suffix", {"kustomization.yaml": "namePrefix: p-\nnameSuffix: -s\nresources: [all.yaml]\n", "all.yaml": DEPLOY + "---\n" + SERVICE})
case("prefix-skips-namespace-and-crd", {"kustomization.yaml": "namePrefix: p-\nresources: [r.yaml]\n", "r.yaml": k("""
    apiVersion: v1
    kind: Namespace
    metadata: {name: apps}
    ---
    apiVersion: apiextensions.k8s.io/v1
    kind: CustomResourceDefinition
    metadata: {name: foos.example.com}
    ---
    apiVersion: rbac.authorization.k8s.io/v1
    kind: ClusterRole
    metadata: {name: reader}
    """)})
case("common-labels", {"kustomization.yaml": "commonLabels: {team: a, tier: web}\nresources: [all.yaml]\n", "all.yaml": DEPLOY + "---\n" + SERVICE + "---\n" + CM})
case("common-labels-cronjob", {"kustomization.yaml": "commonLabels: {team: a}\nresources: [c.yaml]\n", "c.yaml": k("""
    apiVersion: batch/v1
    kind: CronJob
    metadata: {name: backup}
    spec:
      schedule: "0 * * * *"
      jobTemplate:
        spec:
          template:
            spec:
              restartPolicy: Never
              containers: [{name: b, image: busybox}]
    """)})
case("labels-pairs-only", {"kustomization.yaml": "labels:\n- pairs: {team: a}\nresources: [all.yaml]\n", "all.yaml": DEPLOY + "---\n" + SERVICE})
case("labels-include-selectors", {"kustomization.yaml": "labels:\n- pairs: {team: a}\n  includeSelectors: true\nresources: [all.yaml]\n", "all.yaml": DEPLOY + "---\n" + SERVICE})
case("labels-include-templates", {"kustomization.yaml": "labels:\n- pairs: {team: a}\n  includeTemplates: true\nresources: [all.yaml]\n", "all.yaml": DEPLOY + "---\n" + SERVICE})
case("common-annotations", {"kustomization.yaml": "commonAnnotations: {owner: me, count: \"1\"}\nresources: [all.yaml]\n", "all.yaml": DEPLOY + "---\n" + CM})
case("images-new-tag", {"kustomization.yaml": "images:\n- name: nginx\n  newTag: \"1.25\"\nresources: [d.yaml]\n", "d.yaml": DEPLOY})
case("images-new-name-and-digest", {"kustomization.yaml": "images:\n- name: nginx\n  newName: registry.local:5000/nginx\n  digest: sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\nresources: [d.yaml]\n", "d.yaml": DEPLOY})
case("images-init-containers", {"kustomization.yaml": "images:\n- name: busybox\n  newName: alpine\n  newTag: \"3\"\nresources: [d.yaml]\n", "d.yaml": DEPLOY.replace("      containers:", "      initContainers:\n      - name: init\n        image: busybox\n      containers:")})
case("replicas", {"kustomization.yaml": "replicas:\n- name: web\n  count: 5\nresources: [d.yaml]\n", "d.yaml": DEPLOY})
case("configmap-literals", {"kustomization.yaml": "configMapGenerator:\n- name: cfg\n  literals: [A=1, B=two, C=\"quoted\"]\n"})
case("configmap-files-and-envs", {
    "kustomization.yaml": "configMapGenerator:\n- name: cfg\n  files: [app.conf, renamed.txt=other.txt]\n  envs: [vars.env]\n",
    "app.conf": "listen 80;\n", "other.txt": "hello\n", "vars.env": "# comment\nX=1\nY=two words\n",
})
case("configmap-options", {"kustomization.yaml": "generatorOptions:\n  labels: {gen: \"on\"}\n  annotations: {note: a}\nconfigMapGenerator:\n- name: cfg\n  literals: [A=1]\n  options:\n    labels: {own: label}\n"})
case("configmap-disable-hash", {"kustomization.yaml": "generatorOptions:\n  disableNameSuffixHash: true\nconfigMapGenerator:\n- name: cfg\n  literals: [A=1]\n"})
case("configmap-immutable", {"kustomization.yaml": "configMapGenerator:\n- name: cfg\n  literals: [A=1]\n  options:\n    immutable: true\n"})
case("secret-generator", {"kustomization.yaml": "secretGenerator:\n- name: creds\n  literals: [user=admin, password=s3cret]\n- name: tls\n  type: kubernetes.io/tls\n  files: [tls.crt, tls.key]\n", "tls.crt": "CERT\n", "tls.key": "KEY\n"})
case("generator-reference-with-prefix", {
    "base/kustomization.yaml": "resources: [d.yaml]\nconfigMapGenerator:\n- name: app-config\n  literals: [A=1, B=two]\n",
    "base/d.yaml": DEPLOY.replace("        ports: [{containerPort: 80}]\n", "        envFrom:\n        - configMapRef: {name: app-config}\n"),
    "overlay/kustomization.yaml": "resources: [../base]\nnamePrefix: p-\nnameSuffix: -s\nnamespace: prod\n",
}, build="overlay")
case("generator-references-everywhere", {"kustomization.yaml": k("""
    resources: [pod.yaml]
    namePrefix: x-
    configMapGenerator:
    - name: cfg
      literals: [K=V]
    secretGenerator:
    - name: sec
      literals: [P=Q]
    """), "pod.yaml": k("""
    apiVersion: v1
    kind: Pod
    metadata: {name: p}
    spec:
      imagePullSecrets: [{name: sec}]
      containers:
      - name: c
        image: busybox
        env:
        - name: A
          valueFrom:
            configMapKeyRef: {name: cfg, key: K}
        - name: B
          valueFrom:
            secretKeyRef: {name: sec, key: P}
        envFrom:
        - secretRef: {name: sec}
      volumes:
      - name: v1
        configMap: {name: cfg}
      - name: v2
        secret: {secretName: sec}
      - name: v3
        projected:
          sources:
          - configMap: {name: cfg}
          - secret: {name: sec}
    """)})
case("generator-merge-across-layers", {
    "base/kustomization.yaml": "configMapGenerator:\n- name: cfg\n  literals: [A=1, B=2]\n",
    "overlay/kustomization.yaml": "resources: [../base]\nconfigMapGenerator:\n- name: cfg\n  behavior: merge\n  literals: [B=3, C=4]\n",
}, build="overlay")
case("generator-replace-across-layers", {
    "base/kustomization.yaml": "configMapGenerator:\n- name: cfg\n  literals: [A=1, B=2]\n",
    "overlay/kustomization.yaml": "resources: [../base]\nconfigMapGenerator:\n- name: cfg\n  behavior: replace\n  literals: [Z=9]\n",
}, build="overlay")
case("patches-strategic-merge-file", {"kustomization.yaml": "resources: [d.yaml]\npatchesStrategicMerge: [p.yaml]\n", "d.yaml": DEPLOY, "p.yaml": k("""
    apiVersion: apps/v1
    kind: Deployment
    metadata: {name: web}
    spec:
      replicas: 3
      template:
        spec:
          containers:
          - name: web
            image: nginx:2.0
          - name: sidecar
            image: envoy
    """)})
case("patches-strategic-merge-delete", {"kustomization.yaml": "resources: [d.yaml]\npatches:\n- patch: |-\n    apiVersion: apps/v1\n    kind: Deployment\n    metadata:\n      name: web\n    spec:\n      template:\n        spec:\n          containers:\n          - name: sidecar\n            $patch: delete\n", "d.yaml": DEPLOY.replace("        ports: [{containerPort: 80}]\n", "      - name: sidecar\n        image: envoy\n")})
case("patches-json6902-inline", {"kustomization.yaml": "resources: [d.yaml]\npatches:\n- target:\n    kind: Deployment\n    name: web\n  patch: |-\n    - op: replace\n      path: /spec/replicas\n      value: 4\n    - op: add\n      path: /metadata/annotations\n      value: {patched: \"yes\"}\n", "d.yaml": DEPLOY})
case("patches-json6902-legacy-field", {"kustomization.yaml": "resources: [d.yaml]\npatchesJson6902:\n- target:\n    group: apps\n    version: v1\n    kind: Deployment\n    name: web\n  path: ops.yaml\n", "d.yaml": DEPLOY, "ops.yaml": "- op: remove\n  path: /spec/template/spec/containers/0/ports\n"})
case("patches-target-label-selector", {"kustomization.yaml": "resources: [all.yaml]\npatches:\n- target:\n    labelSelector: patch=me\n  patch: |-\n    - op: add\n      path: /metadata/labels/patched\n      value: \"true\"\n", "all.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  labels: {patch: me}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: b\n  labels: {patch: no}\n"})
case("patches-target-regex-name", {"kustomization.yaml": "resources: [all.yaml]\npatches:\n- target:\n    kind: ConfigMap\n    name: app-.*\n  patch: |-\n    apiVersion: v1\n    kind: ConfigMap\n    metadata:\n      name: any\n    data:\n      added: x\n", "all.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app-one}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: app-two}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: other}\n"})
case("components", {
    "base/kustomization.yaml": "resources: [d.yaml]\n", "base/d.yaml": DEPLOY,
    "comp/kustomization.yaml": "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\nresources: [cm.yaml]\npatches:\n- target: {kind: Deployment}\n  patch: |-\n    - op: replace\n      path: /spec/replicas\n      value: 2\n", "comp/cm.yaml": CM,
    "overlay/kustomization.yaml": "resources: [../base]\ncomponents: [../comp]\n",
}, build="overlay")
case("overlay-on-overlay", {
    "base/kustomization.yaml": "resources: [d.yaml]\nconfigMapGenerator:\n- name: cfg\n  literals: [A=1]\n", "base/d.yaml": DEPLOY,
    "mid/kustomization.yaml": "resources: [../base]\nnamePrefix: mid-\ncommonLabels: {layer: mid}\n",
    "top/kustomization.yaml": "resources: [../mid]\nnamePrefix: top-\nnamespace: top\nimages:\n- name: nginx\n  newTag: \"3\"\n",
}, build="top")
case("sort-fifo", {"kustomization.yaml": "sortOptions:\n  order: fifo\nresources: [all.yaml]\n", "all.yaml": DEPLOY + "---\n" + SERVICE + "---\n" + CM + "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: z}\n"})
case("sort-legacy-many-kinds", {"kustomization.yaml": "resources: [all.yaml]\n", "all.yaml": k("""
    apiVersion: admissionregistration.k8s.io/v1
    kind: ValidatingWebhookConfiguration
    metadata: {name: v}
    ---
    apiVersion: apps/v1
    kind: DaemonSet
    metadata: {name: ds}
    ---
    apiVersion: v1
    kind: Secret
    metadata: {name: s}
    ---
    apiVersion: v1
    kind: ConfigMap
    metadata: {name: b}
    ---
    apiVersion: v1
    kind: ConfigMap
    metadata: {name: a}
    ---
    apiVersion: example.com/v1
    kind: Widget
    metadata: {name: w}
    ---
    apiVersion: v1
    kind: Namespace
    metadata: {name: n}
    """)})
case("rbac-references", {"kustomization.yaml": "namePrefix: p-\nnamespace: ns1\nresources: [r.yaml]\n", "r.yaml": k("""
    apiVersion: v1
    kind: ServiceAccount
    metadata: {name: sa}
    ---
    apiVersion: rbac.authorization.k8s.io/v1
    kind: Role
    metadata: {name: r}
    ---
    apiVersion: rbac.authorization.k8s.io/v1
    kind: RoleBinding
    metadata: {name: rb}
    roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: r}
    subjects:
    - {kind: ServiceAccount, name: sa}
    ---
    apiVersion: rbac.authorization.k8s.io/v1
    kind: ClusterRole
    metadata: {name: cr}
    ---
    apiVersion: rbac.authorization.k8s.io/v1
    kind: ClusterRoleBinding
    metadata: {name: crb}
    roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cr}
    subjects:
    - {kind: ServiceAccount, name: sa, namespace: default}
    """)})
case("ingress-and-statefulset-references", {"kustomization.yaml": "nameSuffix: -v2\nresources: [r.yaml]\n", "r.yaml": k("""
    apiVersion: v1
    kind: Service
    metadata: {name: db}
    spec:
      selector: {app: db}
      ports: [{port: 5432}]
    ---
    apiVersion: apps/v1
    kind: StatefulSet
    metadata: {name: db}
    spec:
      serviceName: db
      selector:
        matchLabels: {app: db}
      template:
        metadata:
          labels: {app: db}
        spec:
          containers: [{name: db, image: postgres}]
          volumes:
          - name: data
            persistentVolumeClaim: {claimName: data}
    ---
    apiVersion: v1
    kind: PersistentVolumeClaim
    metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 1Gi}}
    ---
    apiVersion: networking.k8s.io/v1
    kind: Ingress
    metadata: {name: web}
    spec:
      tls: [{hosts: [a.example], secretName: tls}]
      rules:
      - host: a.example
        http:
          paths:
          - path: /
            pathType: Prefix
            backend:
              service: {name: db, port: {number: 5432}}
    ---
    apiVersion: v1
    kind: Secret
    metadata: {name: tls}
    type: Opaque
    ---
    apiVersion: autoscaling/v2
    kind: HorizontalPodAutoscaler
    metadata: {name: db}
    spec:
      scaleTargetRef: {apiVersion: apps/v1, kind: StatefulSet, name: db}
      minReplicas: 1
      maxReplicas: 2
    """)})
# Error cases: kustomize rejects them; terrace's message must say why.
case("error-missing-resource", {"kustomization.yaml": "resources: [nope.yaml]\n"}, error="does not exist")
case("error-unknown-field", {"kustomization.yaml": "resourcs: [d.yaml]\n", "d.yaml": DEPLOY}, error="unknown field `resourcs`")
case("error-helm-charts", {"kustomization.yaml": "helmCharts:\n- name: x\n  repo: https://example.com\n"}, error="--enable-helm")
case("error-load-restrictor", {"base/secret.txt": "x\n", "overlay/kustomization.yaml": "configMapGenerator:\n- name: c\n  files: [../base/secret.txt]\n"}, build="overlay", error="outside the kustomization root")
case("error-component-as-resource", {"comp/kustomization.yaml": "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\n", "kustomization.yaml": "resources: [comp]\n"}, error="only be used under `components`")
case("error-merge-without-base", {"kustomization.yaml": "configMapGenerator:\n- name: cfg\n  behavior: merge\n  literals: [A=1]\n"}, error="does not exist to merge")
case("error-duplicate-resource", {"kustomization.yaml": "resources: [a.yaml, b.yaml]\n", "a.yaml": CM, "b.yaml": CM}, error="already registered id")
case("error-cycle", {"a/kustomization.yaml": "resources: [../b]\n", "b/kustomization.yaml": "resources: [../a]\n"}, build="a", error="cycle detected")
case("error-no-kustomization", {"other.yaml": CM, "kustomization.yaml": "resources: [sub]\n", "sub/x.yaml": CM}, error="no kustomization file")

# --- replacements ---------------------------------------------------------
REPSRC = k("""
    apiVersion: v1
    kind: ConfigMap
    metadata:
      name: src
      annotations:
        example.com/image: "nginx:1.25"
    data:
      image: "nginx:1.25"
      port: "8080"
      count: "3"
      host: db.prod.svc
    """)
REPDEP = DEPLOY.replace("        ports: [{containerPort: 80}]\n", "        ports: [{containerPort: 80}]\n        env:\n        - {name: HOST, value: localhost}\n        - {name: PORT, value: \"80\"}\n      - name: side\n        image: envoy:1.0\n")
case("replacements-basic", {"kustomization.yaml": k("""
    resources: [src.yaml, d.yaml]
    replacements:
    - source:
        kind: ConfigMap
        name: src
      targets:
      - select:
          kind: Deployment
        fieldPaths:
        - spec.template.metadata.annotations.config
        options:
          create: true
    """), "src.yaml": REPSRC, "d.yaml": REPDEP})
case("replacements-list-items-by-field", {"kustomization.yaml": k("""
    resources: [src.yaml, d.yaml]
    replacements:
    - source:
        kind: ConfigMap
        name: src
        fieldPath: data.host
      targets:
      - select:
          kind: Deployment
          name: web
        fieldPaths:
        - spec.template.spec.containers.[name=web].env.[name=HOST].value
    - source:
        kind: ConfigMap
        name: src
        fieldPath: data.port
      targets:
      - select:
          kind: Deployment
        fieldPaths:
        - spec.template.spec.containers.0.env.1.value
        - spec.template.spec.containers.[name=web].ports.0.containerPort
    """), "src.yaml": REPSRC, "d.yaml": REPDEP})
case("replacements-wildcard", {"kustomization.yaml": k("""
    resources: [src.yaml, d.yaml]
    replacements:
    - source:
        kind: ConfigMap
        name: src
        fieldPath: data.image
      targets:
      - select:
          kind: Deployment
        fieldPaths:
        - spec.template.spec.containers.*.image
    """), "src.yaml": REPSRC, "d.yaml": REPDEP})
case("replacements-delimiters", {"kustomization.yaml": k("""
    resources: [src.yaml, d.yaml]
    replacements:
    - source:
        kind: ConfigMap
        name: src
        fieldPath: data.image
        options:
          delimiter: ':'
          index: 1
      targets:
      - select:
          kind: Deployment
        fieldPaths:
        - spec.template.spec.containers.[name=side].image
        options:
          delimiter: ':'
          index: 1
    - source:
        kind: ConfigMap
        name: src
        fieldPath: data.host
        options:
          delimiter: '.'
      targets:
      - select:
          kind: Deployment
        fieldPaths:
        - metadata.name
        options:
          delimiter: '-'
          index: -1
      - select:
          kind: Deployment
        fieldPaths:
        - spec.template.spec.containers.[name=web].env.[name=HOST].value
        options:
          delimiter: '.'
          index: 5
    """), "src.yaml": REPSRC, "d.yaml": REPDEP})
case("replacements-create-and-types", {"kustomization.yaml": k("""
    resources: [src.yaml, d.yaml, thing.yaml]
    replacements:
    - source:
        kind: ConfigMap
        name: src
        fieldPath: data.count
      targets:
      - select:
          kind: Deployment
        fieldPaths:
        - spec.replicas
        - metadata.labels.count
        - spec.template.spec.containers.[name=web].env.[name=PORT].value
      - select:
          kind: Thing
        fieldPaths:
        - spec.asString
        - spec.created.deep
        - spec.items.[name=new].value
        options:
          create: true
    """), "src.yaml": REPSRC, "d.yaml": REPDEP.replace("  name: web\nspec:", "  name: web\n  labels: {count: \"1\"}\nspec:"), "thing.yaml": k("""
    apiVersion: example.com/v1
    kind: Thing
    metadata:
      name: t
    spec:
      asString: "x"
      items:
      - name: old
        value: 1
    """)})
case("replacements-reject-and-selectors", {"kustomization.yaml": k("""
    resources: [src.yaml, all.yaml]
    replacements:
    - source:
        kind: ConfigMap
        name: src
        fieldPath: data.host
      targets:
      - select:
          kind: ConfigMap
          labelSelector: role=client
        reject:
        - name: b
        fieldPaths:
        - data.host
      - select:
          annotationSelector: pick=yes
        fieldPaths:
        - data.picked
        options:
          create: true
    """), "src.yaml": REPSRC, "all.yaml": k("""
    apiVersion: v1
    kind: ConfigMap
    metadata:
      name: a
      labels: {role: client}
    data: {host: none}
    ---
    apiVersion: v1
    kind: ConfigMap
    metadata:
      name: b
      labels: {role: client}
      annotations: {pick: "yes"}
    data: {host: none}
    ---
    apiVersion: v1
    kind: ConfigMap
    metadata:
      name: c
      labels: {role: server}
    data: {host: none}
    """)})
case("replacements-from-files", {"kustomization.yaml": "resources: [src.yaml, d.yaml]\nreplacements:\n- path: one.yaml\n- path: many.yaml\n", "src.yaml": REPSRC, "d.yaml": REPDEP,
    "one.yaml": k("""
    source:
      kind: ConfigMap
      name: src
      fieldPath: data.image
    targets:
    - select:
        kind: Deployment
      fieldPaths:
      - spec.template.spec.containers.[name=web].image
    """), "many.yaml": k("""
    - source:
        kind: ConfigMap
        name: src
        fieldPath: metadata.annotations.[example.com/image]
      targets:
      - select:
          kind: Deployment
        fieldPaths:
        - metadata.annotations.[example.com/from]
        options:
          create: true
    """)})
case("replacements-after-prefix-and-hash", {"kustomization.yaml": k("""
    namePrefix: p-
    resources: [d.yaml]
    configMapGenerator:
    - name: cfg
      literals: [A=1]
    replacements:
    - source:
        kind: ConfigMap
        name: cfg
      targets:
      - select:
          kind: Deployment
          name: p-web
        fieldPaths:
        - metadata.annotations.config-name
        options:
          create: true
    - source:
        kind: Deployment
        name: web
        fieldPath: metadata.name
      targets:
      - select:
          kind: ConfigMap
          name: cfg
        fieldPaths:
        - data.B
        options:
          create: true
    """), "d.yaml": DEPLOY})
case("replacements-whole-map", {"kustomization.yaml": k("""
    resources: [src.yaml, t.yaml]
    replacements:
    - source:
        kind: ConfigMap
        name: src
        fieldPath: data
      targets:
      - select:
          kind: ConfigMap
          name: target
        fieldPaths:
        - data
    """), "src.yaml": REPSRC, "t.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: target\ndata:\n  old: x\n"})
case("replacements-overlay-over-base", {
    "base/kustomization.yaml": "resources: [src.yaml, d.yaml, s.yaml]\n", "base/src.yaml": REPSRC, "base/d.yaml": REPDEP,
    "overlay/kustomization.yaml": k("""
    resources: [../base]
    namePrefix: prod-
    namespace: prod
    replacements:
    - source:
        kind: Service
        name: web
        fieldPath: metadata.name
      targets:
      - select:
          kind: Deployment
        fieldPaths:
        - spec.template.spec.containers.[name=web].env.[name=HOST].value
        options:
          delimiter: '.'
          index: 0
    """), "base/s.yaml": SERVICE}, build="overlay")
case("replacements-in-component", {
    "base/kustomization.yaml": "resources: [src.yaml, d.yaml]\n", "base/src.yaml": REPSRC, "base/d.yaml": REPDEP,
    "comp/kustomization.yaml": k("""
    apiVersion: kustomize.config.k8s.io/v1alpha1
    kind: Component
    replacements:
    - source:
        kind: ConfigMap
        name: src
        fieldPath: data.count
      targets:
      - select:
          kind: Deployment
        fieldPaths:
        - spec.replicas
    """), "overlay/kustomization.yaml": "resources: [../base]\ncomponents: [../comp]\n"}, build="overlay")
case("error-replacements-no-source", {"kustomization.yaml": "resources: [d.yaml]\nreplacements:\n- source:\n    kind: ConfigMap\n    name: nope\n  targets:\n  - select:\n      kind: Deployment\n    fieldPaths: [metadata.name]\n", "d.yaml": DEPLOY}, error="nothing selected by source")
case("error-replacements-two-sources", {"kustomization.yaml": "resources: [src.yaml, d.yaml]\nreplacements:\n- source:\n    version: v1\n  targets:\n  - select:\n      kind: Deployment\n", "src.yaml": REPSRC, "d.yaml": DEPLOY + "---\n" + SERVICE}, error="multiple matches for source")
case("error-replacements-missing-target-field", {"kustomization.yaml": "resources: [src.yaml, d.yaml]\nreplacements:\n- source:\n    kind: ConfigMap\n  targets:\n  - select:\n      kind: Deployment\n    fieldPaths: [spec.nothing.here]\n", "src.yaml": REPSRC, "d.yaml": DEPLOY}, error="unable to find field \"spec.nothing.here\"")
case("error-replacements-missing-source-field", {"kustomization.yaml": "resources: [src.yaml, d.yaml]\nreplacements:\n- source:\n    kind: ConfigMap\n    fieldPath: data.nothing\n  targets:\n  - select:\n      kind: Deployment\n", "src.yaml": REPSRC, "d.yaml": DEPLOY}, error="fieldPath `data.nothing` is missing")
case("error-replacements-index-out-of-bounds", {"kustomization.yaml": "resources: [src.yaml, d.yaml]\nreplacements:\n- source:\n    kind: ConfigMap\n    fieldPath: data.host\n    options: {delimiter: '.', index: 9}\n  targets:\n  - select:\n      kind: Deployment\n", "src.yaml": REPSRC, "d.yaml": DEPLOY}, error="options.index 9 is out of bounds")
case("error-replacements-no-targets", {"kustomization.yaml": "resources: [src.yaml]\nreplacements:\n- source:\n    kind: ConfigMap\n", "src.yaml": REPSRC}, error="must specify a source and at least one target")

# --- components -----------------------------------------------------------
COMP = "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\n"
case("components-nested", {
    "base/kustomization.yaml": "resources: [d.yaml]\n", "base/d.yaml": DEPLOY,
    "inner/kustomization.yaml": COMP + "commonLabels: {inner: \"yes\"}\nconfigMapGenerator:\n- name: inner\n  literals: [I=1]\n",
    "outer/kustomization.yaml": COMP + "components: [../inner]\nresources: [cm.yaml]\ncommonAnnotations: {outer: \"yes\"}\n", "outer/cm.yaml": CM,
    "overlay/kustomization.yaml": "resources: [../base]\ncomponents: [../outer]\nnamePrefix: o-\n",
}, build="overlay")
case("components-order-matters", {
    "base/kustomization.yaml": "resources: [d.yaml]\n", "base/d.yaml": DEPLOY,
    "two/kustomization.yaml": COMP + "patches:\n- target: {kind: Deployment}\n  patch: |-\n    - op: replace\n      path: /spec/replicas\n      value: 2\n",
    "three/kustomization.yaml": COMP + "patches:\n- target: {kind: Deployment}\n  patch: |-\n    - op: replace\n      path: /spec/replicas\n      value: 3\n",
    "overlay/kustomization.yaml": "resources: [../base]\ncomponents: [../three, ../two]\n",
}, build="overlay")
case("components-merge-base-generator", {
    "base/kustomization.yaml": "resources: [d.yaml]\nconfigMapGenerator:\n- name: cfg\n  literals: [A=1]\n", "base/d.yaml": DEPLOY.replace("        ports: [{containerPort: 80}]\n", "        envFrom: [{configMapRef: {name: cfg}}]\n"),
    "comp/kustomization.yaml": COMP + "configMapGenerator:\n- name: cfg\n  behavior: merge\n  literals: [B=2]\n",
    "overlay/kustomization.yaml": "resources: [../base]\ncomponents: [../comp]\n",
}, build="overlay")
case("components-see-overlay-resources", {
    "base/kustomization.yaml": "resources: [d.yaml]\n", "base/d.yaml": DEPLOY,
    "comp/kustomization.yaml": COMP + "images:\n- name: nginx\n  newTag: \"9\"\n",
    "overlay/kustomization.yaml": "resources: [../base, extra.yaml]\ncomponents: [../comp]\n", "overlay/extra.yaml": DEPLOY.replace("name: web", "name: extra"),
}, build="overlay")
case("components-shared-by-two-overlays", {
    "base/kustomization.yaml": "resources: [d.yaml]\n", "base/d.yaml": DEPLOY,
    "comp/kustomization.yaml": COMP + "commonLabels: {feature: x}\n",
    "a/kustomization.yaml": "resources: [../base]\ncomponents: [../comp]\nnamePrefix: a-\n",
    "b/kustomization.yaml": "resources: [../base]\ncomponents: [../comp]\nnamePrefix: b-\n",
    "top/kustomization.yaml": "resources: [../a, ../b]\n",
}, build="top")
case("error-kustomization-under-components", {"comp/kustomization.yaml": "resources: []\n", "kustomization.yaml": "components: [comp]\n"}, error="expected kind: Component")

# --- strategic merge subtleties ------------------------------------------
def smp(name, base, patch, extra=None):
    files = {"kustomization.yaml": "resources: [r.yaml]\npatches:\n- path: p.yaml\n", "r.yaml": base, "p.yaml": patch}
    files.update(extra or {})
    case(name, files)

FULLDEP = k("""
    apiVersion: apps/v1
    kind: Deployment
    metadata:
      name: web
      labels: {app: web}
      finalizers: [a, b]
    spec:
      replicas: 1
      selector:
        matchLabels: {app: web}
      template:
        metadata:
          labels: {app: web}
        spec:
          imagePullSecrets: [{name: reg1}]
          tolerations:
          - {key: a, operator: Exists}
          volumes:
          - name: data
            emptyDir: {}
          - name: cfg
            configMap: {name: cfg}
          initContainers:
          - name: init
            image: busybox
          containers:
          - name: web
            image: nginx:1.0
            args: [--a, --b]
            ports:
            - {containerPort: 80, name: http}
            - {containerPort: 443, name: https}
            env:
            - {name: A, value: "1"}
            - {name: B, value: "2"}
            volumeMounts:
            - {name: data, mountPath: /data}
          - name: side
            image: envoy:1.0
    """)
smp("smp-env-merge-by-name", FULLDEP, k("""
    apiVersion: apps/v1
    kind: Deployment
    metadata: {name: web}
    spec:
      template:
        spec:
          containers:
          - name: web
            env:
            - {name: B, value: "20"}
            - {name: C, value: "3"}
    """))
smp("smp-primitive-list-replaced", FULLDEP, k("""
    apiVersion: apps/v1
    kind: Deployment
    metadata: {name: web}
    spec:
      template:
        spec:
          containers:
          - name: web
            args: [--c]
    """))
smp("smp-ports-merge-by-container-port", FULLDEP, k("""
    apiVersion: apps/v1
    kind: Deployment
    metadata: {name: web}
    spec:
      template:
        spec:
          containers:
          - name: web
            ports:
            - {containerPort: 443, name: tls}
            - {containerPort: 8080, name: admin}
    """))
smp("smp-volumes-and-mounts", FULLDEP, k("""
    apiVersion: apps/v1
    kind: Deployment
    metadata: {name: web}
    spec:
      template:
        spec:
          volumes:
          - name: data
            emptyDir: null
            persistentVolumeClaim: {claimName: data}
          - name: extra
            secret: {secretName: extra}
          containers:
          - name: web
            volumeMounts:
            - {name: extra, mountPath: /extra}
            - {name: data, mountPath: /data, readOnly: true}
    """))
smp("smp-delete-directive-on-map", FULLDEP, k("""
    apiVersion: apps/v1
    kind: Deployment
    metadata: {name: web}
    spec:
      selector:
        $patch: delete
      template:
        spec:
          initContainers:
          - name: init
            $patch: delete
    """))
smp("smp-replace-directive-on-list", FULLDEP, k("""
    apiVersion: apps/v1
    kind: Deployment
    metadata: {name: web}
    spec:
      template:
        spec:
          containers:
          - name: only
            image: only:1
          - $patch: replace
    """))
smp("smp-replace-directive-on-map", FULLDEP, k("""
    apiVersion: apps/v1
    kind: Deployment
    metadata: {name: web}
    spec:
      template:
        metadata:
          $patch: replace
          labels: {app: web, new: "yes"}
    """))
smp("smp-null-removes-field", FULLDEP, k("""
    apiVersion: apps/v1
    kind: Deployment
    metadata:
      name: web
      labels: {app: null}
    spec:
      replicas: null
      template:
        spec:
          tolerations: null
    """))
smp("smp-set-element-order", FULLDEP, k("""
    apiVersion: apps/v1
    kind: Deployment
    metadata: {name: web}
    spec:
      template:
        spec:
          $setElementOrder/containers:
          - name: side
          - name: web
          containers:
          - name: web
            image: nginx:2.0
    """))
smp("smp-tolerations-replaced", FULLDEP, k("""
    apiVersion: apps/v1
    kind: Deployment
    metadata: {name: web}
    spec:
      template:
        spec:
          tolerations:
          - {key: b, operator: Exists}
    """))
smp("smp-image-pull-secrets-merge", FULLDEP, k("""
    apiVersion: apps/v1
    kind: Deployment
    metadata: {name: web}
    spec:
      template:
        spec:
          imagePullSecrets: [{name: reg2}]
    """))
smp("smp-new-container-appended", FULLDEP, k("""
    apiVersion: apps/v1
    kind: Deployment
    metadata: {name: web}
    spec:
      template:
        spec:
          containers:
          - name: metrics
            image: exporter:1
    """))
smp("smp-custom-resource-lists-replaced", k("""
    apiVersion: example.com/v1
    kind: Thing
    metadata: {name: t}
    spec:
      items:
      - {name: a, v: 1}
      - {name: b, v: 2}
      nested: {keep: 1, change: 1}
    """), k("""
    apiVersion: example.com/v1
    kind: Thing
    metadata: {name: t}
    spec:
      items:
      - {name: b, v: 3}
      nested: {change: 2, add: 3}
    """))
smp("smp-service-ports-by-port", k("""
    apiVersion: v1
    kind: Service
    metadata: {name: web}
    spec:
      selector: {app: web}
      ports:
      - {name: http, port: 80, targetPort: 8080}
      - {name: https, port: 443, targetPort: 8443}
    """), k("""
    apiVersion: v1
    kind: Service
    metadata: {name: web}
    spec:
      ports:
      - {name: https, port: 443, targetPort: 9443}
      - {name: metrics, port: 9090}
    """))
smp("smp-multiple-docs-in-one-patch", FULLDEP + "---\n" + SERVICE, k("""
    apiVersion: apps/v1
    kind: Deployment
    metadata: {name: web}
    spec:
      replicas: 3
    ---
    apiVersion: v1
    kind: Service
    metadata: {name: web}
    spec:
      type: NodePort
    """))
smp("smp-delete-from-primitive-list", FULLDEP, k("""
    apiVersion: apps/v1
    kind: Deployment
    metadata:
      name: web
      $deleteFromPrimitiveList/finalizers: [a]
    """))
smp("smp-retain-labels-add-annotations", FULLDEP, k("""
    apiVersion: apps/v1
    kind: Deployment
    metadata:
      name: web
      annotations: {note: patched}
      labels: {extra: "1"}
    """))

# --- json 6902 ---------------------------------------------------------------
def j6902(name, ops, base=None, error=None):
    case(name, {"kustomization.yaml": "resources: [r.yaml]\npatches:\n- target:\n    kind: Deployment\n  path: ops.yaml\n", "r.yaml": base or FULLDEP, "ops.yaml": ops}, error=error)

j6902("json6902-append-and-insert", k("""
    - op: add
      path: /spec/template/spec/containers/0/args/-
      value: --z
    - op: add
      path: /spec/template/spec/containers/0/env/0
      value: {name: FIRST, value: "0"}
    """))
j6902("json6902-move-and-copy", k("""
    - op: copy
      from: /spec/template/spec/containers/0/image
      path: /metadata/annotations
      value: null
    - op: move
      from: /metadata/labels/app
      path: /metadata/labels/moved
    """).replace("      value: null\n", "").replace("path: /metadata/annotations", "path: /metadata/labels/copied"))
j6902("json6902-test-passes", k("""
    - op: test
      path: /spec/replicas
      value: 1
    - op: replace
      path: /spec/replicas
      value: 2
    """))
j6902("json6902-escaped-path", k("""
    - op: add
      path: /metadata/annotations
      value: {}
    - op: add
      path: /metadata/annotations/example.com~1team
      value: platform
    - op: add
      path: /metadata/annotations/tilde~0key
      value: x
    """))
j6902("json6902-remove-list-item", k("""
    - op: remove
      path: /spec/template/spec/containers/1
    - op: remove
      path: /spec/template/spec/volumes/0
    """))
j6902("error-json6902-test-fails", k("""
    - op: test
      path: /spec/replicas
      value: 7
    """), error="test")
j6902("error-json6902-remove-missing", k("""
    - op: remove
      path: /spec/nothing
    """), error="/spec/nothing")
case("json6902-json-syntax", {"kustomization.yaml": "resources: [r.yaml]\npatches:\n- target:\n    kind: Deployment\n  path: ops.json\n", "r.yaml": FULLDEP, "ops.json": '[{"op": "replace", "path": "/spec/replicas", "value": 9}]\n'})

# --- patch targets -----------------------------------------------------------
MANY = k("""
    apiVersion: v1
    kind: ConfigMap
    metadata:
      name: alpha
      namespace: one
      labels: {tier: front, env: prod}
      annotations: {team: a}
    ---
    apiVersion: v1
    kind: ConfigMap
    metadata:
      name: beta
      namespace: two
      labels: {tier: back, env: prod}
      annotations: {team: b}
    ---
    apiVersion: v1
    kind: Secret
    metadata:
      name: gamma
      namespace: one
      labels: {tier: front, env: dev}
    ---
    apiVersion: apps/v1
    kind: Deployment
    metadata:
      name: alpha
      namespace: one
    spec:
      template:
        spec:
          containers: [{name: c, image: x}]
    """)
def target(name, tgt):
    case(name, {"kustomization.yaml": "resources: [r.yaml]\npatches:\n- target:\n" + textwrap.indent(k(tgt), "    ") + "  patch: |-\n    - op: add\n      path: /metadata/labels\n      value: {hit: \"yes\"}\n", "r.yaml": MANY})
target("target-annotation-selector", "annotationSelector: team=b\n")
target("target-namespace", "namespace: one\n")
target("target-group-version", "group: apps\nversion: v1\n")
target("target-name-alternation", "name: alpha|beta\nkind: ConfigMap\n")
target("target-set-based-selector", "labelSelector: tier in (front),env notin (dev)\n")
target("target-not-equal-selector", "labelSelector: env!=prod\n")
target("target-existence-selector", "labelSelector: \"!tier\"\n")
target("target-kind-regex", "kind: Config.*\n")
case("patch-options-allow-name-change", {"kustomization.yaml": "resources: [d.yaml]\npatches:\n- target: {kind: Deployment, name: web}\n  options: {allowNameChange: true}\n  patch: |-\n    apiVersion: apps/v1\n    kind: Deployment\n    metadata:\n      name: renamed\n", "d.yaml": DEPLOY})
case("patch-smp-with-target-renames-nothing", {"kustomization.yaml": "resources: [r.yaml]\npatches:\n- target: {kind: ConfigMap}\n  patch: |-\n    apiVersion: v1\n    kind: ConfigMap\n    metadata:\n      name: ignored\n    data:\n      added: \"1\"\n", "r.yaml": MANY})

# --- name references ---------------------------------------------------------
case("nameref-pod-spec-everywhere", {"kustomization.yaml": k("""
    namePrefix: p-
    resources: [r.yaml]
    configMapGenerator:
    - name: cfg
      literals: [A=1]
    secretGenerator:
    - name: sec
      literals: [B=2]
    """), "r.yaml": k("""
    apiVersion: v1
    kind: ServiceAccount
    metadata: {name: runner}
    ---
    apiVersion: v1
    kind: PersistentVolumeClaim
    metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 1Gi}}
    ---
    apiVersion: scheduling.k8s.io/v1
    kind: PriorityClass
    metadata: {name: high}
    value: 1000
    ---
    apiVersion: batch/v1
    kind: CronJob
    metadata: {name: nightly}
    spec:
      schedule: "0 0 * * *"
      jobTemplate:
        spec:
          template:
            spec:
              serviceAccountName: runner
              priorityClassName: high
              restartPolicy: Never
              containers:
              - name: job
                image: busybox
                env:
                - name: A
                  valueFrom: {configMapKeyRef: {name: cfg, key: A}}
                - name: B
                  valueFrom: {secretKeyRef: {name: sec, key: B}}
                envFrom:
                - configMapRef: {name: cfg}
                - secretRef: {name: sec}
              volumes:
              - name: d
                persistentVolumeClaim: {claimName: data}
              - name: all
                projected:
                  sources:
                  - configMap: {name: cfg}
                  - secret: {name: sec}
    ---
    apiVersion: v1
    kind: Pod
    metadata: {name: solo}
    spec:
      serviceAccountName: runner
      containers:
      - name: c
        image: busybox
        envFrom: [{configMapRef: {name: cfg}}]
    """)})
case("nameref-hpa-pdb-and-service", {"kustomization.yaml": "nameSuffix: -v1\nresources: [r.yaml]\n", "r.yaml": DEPLOY + "---\n" + SERVICE + "---\n" + k("""
    apiVersion: autoscaling/v2
    kind: HorizontalPodAutoscaler
    metadata: {name: web}
    spec:
      scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}
      minReplicas: 1
      maxReplicas: 3
    ---
    apiVersion: policy/v1
    kind: PodDisruptionBudget
    metadata: {name: web}
    spec:
      minAvailable: 1
      selector: {matchLabels: {app: web}}
    ---
    apiVersion: networking.k8s.io/v1
    kind: Ingress
    metadata: {name: web}
    spec:
      tls:
      - hosts: [web.local]
        secretName: web-tls
      rules:
      - host: web.local
        http:
          paths:
          - path: /
            pathType: Prefix
            backend:
              service: {name: web, port: {number: 80}}
    ---
    apiVersion: v1
    kind: Secret
    metadata: {name: web-tls}
    type: kubernetes.io/tls
    data: {tls.crt: "", tls.key: ""}
    """)})
case("nameref-statefulset-service-and-claims", {"kustomization.yaml": "namePrefix: db-\nresources: [r.yaml]\n", "r.yaml": k("""
    apiVersion: v1
    kind: Service
    metadata: {name: pg}
    spec:
      clusterIP: None
      selector: {app: pg}
    ---
    apiVersion: apps/v1
    kind: StatefulSet
    metadata: {name: pg}
    spec:
      serviceName: pg
      selector: {matchLabels: {app: pg}}
      template:
        metadata: {labels: {app: pg}}
        spec:
          containers: [{name: pg, image: postgres}]
      volumeClaimTemplates:
      - metadata: {name: data}
        spec:
          accessModes: [ReadWriteOnce]
          resources: {requests: {storage: 1Gi}}
    """)})
case("nameref-rbac-cluster-roles", {"kustomization.yaml": "namePrefix: x-\nnamespace: team\nresources: [r.yaml]\n", "r.yaml": k("""
    apiVersion: v1
    kind: ServiceAccount
    metadata: {name: bot}
    ---
    apiVersion: rbac.authorization.k8s.io/v1
    kind: ClusterRole
    metadata: {name: reader}
    rules: [{apiGroups: [""], resources: [pods], verbs: [get]}]
    ---
    apiVersion: rbac.authorization.k8s.io/v1
    kind: ClusterRoleBinding
    metadata: {name: bot-reads}
    roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: reader}
    subjects:
    - {kind: ServiceAccount, name: bot, namespace: elsewhere}
    - {kind: ServiceAccount, name: default, namespace: team}
    - {kind: User, name: alice, apiGroup: rbac.authorization.k8s.io}
    ---
    apiVersion: rbac.authorization.k8s.io/v1
    kind: RoleBinding
    metadata: {name: bot-reads-here}
    roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: reader}
    subjects:
    - {kind: ServiceAccount, name: bot}
    """)})
case("nameref-same-name-different-kinds", {"kustomization.yaml": "namePrefix: p-\nresources: [r.yaml]\nconfigMapGenerator:\n- name: app\n  literals: [A=1]\nsecretGenerator:\n- name: app\n  literals: [B=2]\n", "r.yaml": DEPLOY.replace("        ports: [{containerPort: 80}]\n", "        envFrom:\n        - configMapRef: {name: app}\n        - secretRef: {name: app}\n")})
case("nameref-across-namespaces", {
    "a/kustomization.yaml": "namespace: a\nresources: [cm.yaml]\nconfigMapGenerator:\n- name: cfg\n  literals: [A=a]\n", "a/cm.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: marker}\n",
    "b/kustomization.yaml": "namespace: b\nresources: [d.yaml]\nconfigMapGenerator:\n- name: cfg\n  literals: [A=b]\n", "b/d.yaml": DEPLOY.replace("        ports: [{containerPort: 80}]\n", "        envFrom: [{configMapRef: {name: cfg}}]\n"),
    "top/kustomization.yaml": "resources: [../a, ../b]\n",
}, build="top")

# --- namespace --------------------------------------------------------------
case("namespace-webhook-and-apiservice", {"kustomization.yaml": "namespace: sys\nresources: [r.yaml]\n", "r.yaml": k("""
    apiVersion: admissionregistration.k8s.io/v1
    kind: ValidatingWebhookConfiguration
    metadata: {name: check}
    webhooks:
    - name: check.example.com
      clientConfig:
        service: {name: hook, namespace: default, path: /validate}
      admissionReviewVersions: [v1]
      sideEffects: None
    ---
    apiVersion: v1
    kind: Service
    metadata: {name: hook}
    spec:
      ports: [{port: 443}]
    """)})
case("namespace-both-layers", {
    "base/kustomization.yaml": "namespace: base\nresources: [d.yaml]\n", "base/d.yaml": DEPLOY,
    "overlay/kustomization.yaml": "namespace: overlay\nresources: [../base]\n",
}, build="overlay")
case("namespace-kind-itself", {"kustomization.yaml": "namespace: prod\nresources: [r.yaml]\n", "r.yaml": "apiVersion: v1\nkind: Namespace\nmetadata: {name: other}\n---\n" + CM})

# --- labels and annotations ---------------------------------------------------
WORKLOADS = k("""
    apiVersion: apps/v1
    kind: StatefulSet
    metadata: {name: db}
    spec:
      selector: {matchLabels: {app: db}}
      template:
        metadata: {labels: {app: db}}
        spec:
          containers: [{name: db, image: pg}]
      volumeClaimTemplates:
      - metadata: {name: data}
        spec: {accessModes: [ReadWriteOnce]}
    ---
    apiVersion: apps/v1
    kind: DaemonSet
    metadata: {name: agent}
    spec:
      selector: {matchLabels: {app: agent}}
      template:
        metadata: {labels: {app: agent}}
        spec:
          containers: [{name: a, image: agent}]
    ---
    apiVersion: batch/v1
    kind: Job
    metadata: {name: once}
    spec:
      template:
        spec:
          restartPolicy: Never
          containers: [{name: j, image: busybox}]
    ---
    apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: deny}
    spec:
      podSelector: {matchLabels: {app: db}}
    ---
    apiVersion: policy/v1
    kind: PodDisruptionBudget
    metadata: {name: db}
    spec:
      selector: {matchLabels: {app: db}}
    """)
case("common-labels-workloads", {"kustomization.yaml": "commonLabels: {team: data}\nresources: [r.yaml]\n", "r.yaml": WORKLOADS})
case("common-annotations-workloads", {"kustomization.yaml": "commonAnnotations: {owner: data}\nresources: [r.yaml]\n", "r.yaml": WORKLOADS})
case("labels-selectors-workloads", {"kustomization.yaml": "labels:\n- pairs: {team: data}\n  includeSelectors: true\n- pairs: {tmpl: only}\n  includeTemplates: true\n- pairs: {meta: only}\nresources: [r.yaml]\n", "r.yaml": WORKLOADS})
case("common-labels-override-existing", {"kustomization.yaml": "commonLabels: {app: renamed}\nresources: [all.yaml]\n", "all.yaml": DEPLOY + "---\n" + SERVICE})
case("error-common-labels-number", {"kustomization.yaml": "commonLabels: {version: 2}\nresources: [c.yaml]\n", "c.yaml": CM}, error="`commonLabels.version` must be a string")
case("error-common-annotations-bool", {"kustomization.yaml": "commonAnnotations: {enabled: true}\nresources: [c.yaml]\n", "c.yaml": CM}, error="`commonAnnotations.enabled` must be a string")
case("error-replicas-count-string", {"kustomization.yaml": "replicas:\n- name: web\n  count: \"2\"\nresources: [d.yaml]\n", "d.yaml": DEPLOY}, error="`replicas[0].count` must be a whole number")
case("labels-on-generated-objects", {"kustomization.yaml": "commonLabels: {team: a}\nconfigMapGenerator:\n- name: cfg\n  literals: [A=1]\n"})

# --- images -------------------------------------------------------------------
IMGPOD = k("""
    apiVersion: v1
    kind: Pod
    metadata: {name: p}
    spec:
      initContainers:
      - {name: i, image: "registry.local:5000/team/tool:1.0"}
      containers:
      - {name: a, image: nginx}
      - {name: b, image: "nginx:1.0@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}
      - {name: c, image: "docker.io/library/nginx:1.0"}
      - {name: d, image: "nginxx:1.0"}
    """)
case("images-forms", {"kustomization.yaml": k("""
    resources: [p.yaml]
    images:
    - name: nginx
      newTag: "2.0"
    - name: registry.local:5000/team/tool
      newName: tool
      digest: sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb
    """), "p.yaml": IMGPOD})
case("images-new-name-only", {"kustomization.yaml": "resources: [p.yaml]\nimages:\n- name: nginx\n  newName: mirror.local/nginx\n", "p.yaml": IMGPOD})
case("error-images-numeric-tag", {"kustomization.yaml": "resources: [p.yaml]\nimages:\n- name: nginx\n  newTag: 3\n", "p.yaml": IMGPOD}, error="`images[0].newTag` must be a string")
case("images-cronjob-and-overlay", {
    "base/kustomization.yaml": "resources: [c.yaml]\nimages:\n- name: busybox\n  newTag: \"1\"\n", "base/c.yaml": k("""
    apiVersion: batch/v1
    kind: CronJob
    metadata: {name: c}
    spec:
      schedule: "* * * * *"
      jobTemplate:
        spec:
          template:
            spec:
              restartPolicy: Never
              containers: [{name: c, image: busybox}]
    """),
    "overlay/kustomization.yaml": "resources: [../base]\nimages:\n- name: busybox\n  newName: alpine\n",
}, build="overlay")

# --- replicas -----------------------------------------------------------------
case("replicas-statefulset-and-prefix", {
    "base/kustomization.yaml": "namePrefix: b-\nresources: [r.yaml]\n", "base/r.yaml": WORKLOADS.split("---")[0] + "---\n" + DEPLOY,
    "overlay/kustomization.yaml": "resources: [../base]\nreplicas:\n- name: b-db\n  count: 3\n- name: web\n  count: 0\n",
}, build="overlay")

# --- generators -----------------------------------------------------------------
case("configmap-env-file-details", {"kustomization.yaml": "configMapGenerator:\n- name: env\n  envs: [a.env, b.env]\n", "a.env": "# comment\n\nA=1\nB= spaced \nC=\"quoted\"\nexport_D=4\n", "b.env": "F=other\nE=\n"})
case("error-env-repeated-key", {"kustomization.yaml": "configMapGenerator:\n- name: env\n  envs: [a.env, b.env]\n", "a.env": "A=1\n", "b.env": "A=2\n"}, error="repeats the key `A`")
case("configmap-file-key-rename", {"kustomization.yaml": "configMapGenerator:\n- name: files\n  files:\n  - app.conf\n  - custom-key=other.txt\n", "app.conf": "line1\nline2\n", "other.txt": "other\n"})
case("configmap-binary-file", {"kustomization.yaml": "configMapGenerator:\n- name: bin\n  files: [blob.bin, text.txt]\n", "blob.bin": b"\xff\xfe\x00\x01", "text.txt": "plain\n"})
case("configmap-literal-details", {"kustomization.yaml": k("""
    configMapGenerator:
    - name: lit
      literals:
      - KEY=value=with=equals
      - EMPTY=
      - 'SPACED= padded '
      - "MULTI=line1\\nline2"
      - QUOTED='single'
    """)})
case("configmap-namespace-and-behavior-replace", {
    "base/kustomization.yaml": "configMapGenerator:\n- name: cfg\n  namespace: ns1\n  literals: [A=1, B=2]\n",
    "overlay/kustomization.yaml": "resources: [../base]\nconfigMapGenerator:\n- name: cfg\n  namespace: ns1\n  behavior: replace\n  literals: [C=3]\n",
}, build="overlay")
case("secret-generator-envs-and-options", {"kustomization.yaml": "secretGenerator:\n- name: env\n  envs: [s.env]\n  options:\n    disableNameSuffixHash: true\n    annotations: {a: b}\n- name: typed\n  type: Opaque\n  literals: [X=y]\n", "s.env": "USER=admin\nPASS=p@ss\n"})
case("generator-options-per-generator-hash", {"kustomization.yaml": "generatorOptions:\n  disableNameSuffixHash: true\nconfigMapGenerator:\n- name: nohash\n  literals: [A=1]\n- name: hashed\n  literals: [A=1]\n  options:\n    disableNameSuffixHash: false\n"})
case("generator-merge-in-overlay-with-prefix", {
    "base/kustomization.yaml": "namePrefix: base-\nresources: [d.yaml]\nconfigMapGenerator:\n- name: cfg\n  literals: [A=1]\n", "base/d.yaml": DEPLOY.replace("        ports: [{containerPort: 80}]\n", "        envFrom: [{configMapRef: {name: cfg}}]\n"),
    "overlay/kustomization.yaml": "namePrefix: top-\nresources: [../base]\nconfigMapGenerator:\n- name: base-cfg\n  behavior: merge\n  literals: [B=2]\n",
}, build="overlay")
case("generator-in-component-with-hash-ref", {
    "base/kustomization.yaml": "resources: [d.yaml]\n", "base/d.yaml": DEPLOY.replace("        ports: [{containerPort: 80}]\n", "        envFrom: [{secretRef: {name: creds}}]\n"),
    "comp/kustomization.yaml": COMP + "secretGenerator:\n- name: creds\n  literals: [TOKEN=abc]\n",
    "overlay/kustomization.yaml": "resources: [../base]\ncomponents: [../comp]\nnamespace: apps\n",
}, build="overlay")

# --- sorting ------------------------------------------------------------------
ALLKINDS = k("""
    apiVersion: v1
    kind: Service
    metadata: {name: z-svc}
    ---
    apiVersion: apps/v1
    kind: Deployment
    metadata: {name: a-dep}
    ---
    apiVersion: v1
    kind: ConfigMap
    metadata: {name: b-cm}
    ---
    apiVersion: v1
    kind: Namespace
    metadata: {name: ns}
    ---
    apiVersion: example.com/v1
    kind: Custom
    metadata: {name: c}
    ---
    apiVersion: apiextensions.k8s.io/v1
    kind: CustomResourceDefinition
    metadata: {name: customs.example.com}
    ---
    apiVersion: v1
    kind: ConfigMap
    metadata: {name: a-cm, namespace: zz}
    ---
    apiVersion: v1
    kind: ConfigMap
    metadata: {name: a-cm}
    """)
case("sort-legacy-custom-order", {"kustomization.yaml": "sortOptions:\n  order: legacy\n  legacySortOptions:\n    orderFirst: [ConfigMap, Service]\n    orderLast: [Namespace]\nresources: [r.yaml]\n", "r.yaml": ALLKINDS})
case("sort-legacy-names-and-namespaces", {"kustomization.yaml": "resources: [r.yaml]\n", "r.yaml": ALLKINDS})
case("sort-fifo-across-bases", {
    "a/kustomization.yaml": "resources: [r.yaml]\n", "a/r.yaml": SERVICE,
    "b/kustomization.yaml": "resources: [r.yaml]\n", "b/r.yaml": "apiVersion: v1\nkind: Namespace\nmetadata: {name: n}\n",
    "top/kustomization.yaml": "sortOptions: {order: fifo}\nresources: [../a, ../b, cm.yaml]\n", "top/cm.yaml": CM,
}, build="top")

# --- overlays ------------------------------------------------------------------
case("overlay-three-levels-all-fields", {
    "base/kustomization.yaml": "resources: [d.yaml, s.yaml]\nconfigMapGenerator:\n- name: cfg\n  literals: [LEVEL=base]\n", "base/d.yaml": DEPLOY.replace("        ports: [{containerPort: 80}]\n", "        envFrom: [{configMapRef: {name: cfg}}]\n"), "base/s.yaml": SERVICE,
    "staging/kustomization.yaml": "resources: [../base]\nnamePrefix: stg-\nnamespace: staging\ncommonLabels: {env: staging}\nconfigMapGenerator:\n- name: cfg\n  behavior: merge\n  literals: [LEVEL=staging]\n",
    "staging-eu/kustomization.yaml": "resources: [../staging]\nnameSuffix: -eu\ncommonAnnotations: {region: eu}\nreplicas:\n- name: web\n  count: 2\nimages:\n- name: nginx\n  newTag: \"1.27\"\npatches:\n- target: {kind: Service}\n  patch: |-\n    - op: add\n      path: /spec/type\n      value: LoadBalancer\n",
}, build="staging-eu")
case("overlay-diamond-with-prefixes", {
    "base/kustomization.yaml": "resources: [d.yaml]\n", "base/d.yaml": DEPLOY,
    "blue/kustomization.yaml": "resources: [../base]\nnameSuffix: -blue\ncommonLabels: {color: blue}\n",
    "green/kustomization.yaml": "resources: [../base]\nnameSuffix: -green\ncommonLabels: {color: green}\n",
    "top/kustomization.yaml": "resources: [../blue, ../green]\n",
}, build="top")
case("overlay-kustomization-yml-and-Kustomization", {
    "a/kustomization.yml": "resources: [r.yaml]\n", "a/r.yaml": CM,
    "b/Kustomization": "resources: [r.yaml]\n", "b/r.yaml": SERVICE,
    "top/kustomization.yaml": "resources: [../a, ../b]\n",
}, build="top")

# --- more errors ---------------------------------------------------------------
case("error-remote-base", {"kustomization.yaml": "resources:\n- github.com/example/repo//base?ref=v1\n"}, error="remote")
case("error-smp-no-match", {"kustomization.yaml": "resources: [d.yaml]\npatchesStrategicMerge:\n- |-\n  apiVersion: apps/v1\n  kind: Deployment\n  metadata:\n    name: nope\n  spec:\n    replicas: 2\n", "d.yaml": DEPLOY}, error="nope")
case("error-bad-sort-order", {"kustomization.yaml": "sortOptions:\n  order: random\nresources: [c.yaml]\n", "c.yaml": CM}, error="random")
case("error-invalid-resource-yaml", {"kustomization.yaml": "resources: [bad.yaml]\n", "bad.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [unclosed\n"}, error="bad.yaml")
case("error-missing-patch-file", {"kustomization.yaml": "resources: [d.yaml]\npatches:\n- path: nothere.yaml\n", "d.yaml": DEPLOY}, error="nothere.yaml")
case("error-generator-missing-file", {"kustomization.yaml": "configMapGenerator:\n- name: c\n  files: [missing.txt]\n"}, error="missing.txt")
case("error-literal-without-equals", {"kustomization.yaml": "configMapGenerator:\n- name: c\n  literals: [JUSTAKEY]\n"}, error="JUSTAKEY")
case("error-resource-without-kind", {"kustomization.yaml": "resources: [r.yaml]\n", "r.yaml": "apiVersion: v1\nmetadata: {name: x}\n"}, error="kind")
case("error-patch-needs-target-for-6902", {"kustomization.yaml": "resources: [d.yaml]\npatches:\n- patch: |-\n    - op: replace\n      path: /spec/replicas\n      value: 2\n", "d.yaml": DEPLOY}, error="target")

# --- regular expressions in targets ---------------------------------------------
target("target-regex-character-class", "name: \"[a-b][a-z]+a\"\n")
target("target-regex-group-and-optional", "kind: (Config|Secr)(Map|et)?\nname: (alpha|gamma)\n")
target("target-regex-is-anchored", "name: lph\n")
case("error-target-invalid-regex", {"kustomization.yaml": "resources: [r.yaml]\npatches:\n- target:\n    name: \"a(b\"\n  patch: |-\n    - op: add\n      path: /metadata/labels\n      value: {hit: \"yes\"}\n", "r.yaml": MANY}, error="not a valid regular expression")

# --- generator merges and namespaces ----------------------------------------------
case("generator-merge-after-base-namespace", {
    "base/kustomization.yaml": "namespace: a\nconfigMapGenerator:\n- name: c\n  literals: [A=1]\n- name: d\n  namespace: x\n  literals: [A=1]\n",
    "overlay/kustomization.yaml": "resources: [../base]\nnamespace: z\nconfigMapGenerator:\n- name: c\n  behavior: merge\n  literals: [B=2]\n- name: d\n  namespace: x\n  behavior: merge\n  literals: [C=3]\n",
}, build="overlay")
case("generator-merge-by-current-namespace", {
    "base/kustomization.yaml": "namespace: a\nconfigMapGenerator:\n- name: c\n  literals: [A=1]\n",
    "overlay/kustomization.yaml": "resources: [../base]\nconfigMapGenerator:\n- name: c\n  namespace: a\n  behavior: merge\n  literals: [B=2]\n",
}, build="overlay")
case("error-generator-merge-other-namespace", {
    "base/kustomization.yaml": "namespace: a\nconfigMapGenerator:\n- name: c\n  literals: [A=1]\n",
    "overlay/kustomization.yaml": "resources: [../base]\nconfigMapGenerator:\n- name: c\n  namespace: b\n  behavior: merge\n  literals: [B=2]\n",
}, build="overlay", error="does not exist to merge")


# --- numbers, base64 and annotation values as kyaml has them ------------------------
case("yaml11-octal-and-go-numbers", {
    "kustomization.yaml": "resources: [p.yaml, c.yaml]\n",
    "p.yaml": "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - {name: c, image: x}\n  volumes:\n  - name: v\n    secret:\n      secretName: s\n      defaultMode: 0400\n      items:\n      - {key: a, path: a, mode: 0775}\n  - name: w\n    secret: {secretName: s, defaultMode: 09}\n",
    "c.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  x: \"0400\"\n  y: 1_000\n  z: 0x1F\n  w: +0755\n  v: 1e3\n  u: 0b101\n  t: 00\n  s: -010\n  r: 1.5\n",
})
case("generator-base64-wraps-at-70-columns", {
    "kustomization.yaml": "secretGenerator:\n- name: s\n  literals:\n  - short=abc\n  - a=0123456789012345678901234567890123456789012345678901234567890\n  - exact=0123456789012345678901234567890123456789012345678901\n  - long=" + "x" * 200 + "\n",
})
case("annotations-non-string-values", {
    "kustomization.yaml": "resources: [p.yaml]\ncommonAnnotations:\n  team: web\n",
    "p.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: p\n  labels:\n    n: 5\n  annotations:\n    happy: true\n    port: 8080\n",
})

case("patch-delete-removes-the-resource", {
    "kustomization.yaml": "resources: [d.yaml, s.yaml]\npatches:\n- patch: |-\n    $patch: delete\n    apiVersion: v1\n    kind: Service\n    metadata:\n      name: web\n",
    "d.yaml": DEPLOY, "s.yaml": SERVICE,
})
case("identity-includes-the-api-group", {
    "kustomization.yaml": "resources: [a.yaml, b.yaml]\n",
    "a.yaml": "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: same\n",
    "b.yaml": "apiVersion: talos.dev/v1alpha1\nkind: ServiceAccount\nmetadata:\n  name: same\n",
})
case("namespace-kind-of-another-group", {
    "kustomization.yaml": "namespace: apps\nnamePrefix: p-\nresources: [n.yaml, c.yaml]\n",
    "n.yaml": "apiVersion: example.com/v1\nkind: Namespace\nmetadata:\n  name: custom\n",
    "c.yaml": CM,
})

case("component-as-the-build-root", {
    "kustomization.yaml": "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\nresources: [c.yaml]\nnamePrefix: x-\nconfigMapGenerator:\n- name: g\n  literals: [A=1]\npatches:\n- target: {kind: ConfigMap, name: plain}\n  patch: |-\n    - op: add\n      path: /data/b\n      value: \"2\"\n",
    "c.yaml": CM,
})

case("field-names-match-case-insensitively", {
    "kustomization.yaml": "Resources: [c.yaml]\nnameprefix: x-\nCOMMONLABELS: {app: web}\n",
    "c.yaml": CM,
})

case("images-in-custom-kinds-and-any-depth", {
    "kustomization.yaml": "resources: [c.yaml]\nimages:\n- name: nginx\n  newTag: \"2.0\"\n",
    "c.yaml": "apiVersion: example.com/v1\nkind: Custom\nmetadata:\n  name: c\nspec:\n  containers:\n  - {name: a, image: nginx:1.0}\n  initContainers:\n  - {name: b, image: nginx:1.0}\n  template:\n    spec:\n      containers:\n      - {name: c, image: nginx:1.0}\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          containers:\n          - {name: d, image: nginx:1.0}\n  foo:\n    containers:\n    - {name: e, image: nginx:1.0}\n  image: nginx:1.0\n",
})

case("namespace-moves-default-service-account-subjects", {
    "kustomization.yaml": "namespace: apps\nresources: [r.yaml, sa.yaml]\n",
    "r.yaml": "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: b\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}\nsubjects:\n- {kind: ServiceAccount, name: default, namespace: default}\n- {kind: ServiceAccount, name: default, namespace: other}\n- {kind: ServiceAccount, name: default}\n- {kind: ServiceAccount, name: other, namespace: default}\n- {kind: ServiceAccount, name: ghost}\n- {kind: ServiceAccount, name: mine}\n- {kind: ServiceAccount, name: x, namespace: elsewhere}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: rb\n  namespace: z\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: r}\nsubjects:\n- {kind: ServiceAccount, name: default, namespace: default}\n- {kind: ServiceAccount, name: other, namespace: default}\n- {kind: ServiceAccount, name: mine}\n- {kind: User, name: u, namespace: default}\n",
    "sa.yaml": "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: mine\n",
})

case("labels-network-policy-peers-and-no-null-claims", {
    "kustomization.yaml": "resources: [s.yaml, n.yaml]\ncommonLabels: {app: web}\n",
    "s.yaml": "apiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: s\nspec:\n  serviceName: s\n  selector: {matchLabels: {x: y}}\n  template:\n    metadata: {labels: {x: y}}\n    spec:\n      containers: [{name: c, image: i}]\n",
    "n.yaml": "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: np\nspec:\n  podSelector: {}\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {role: fe}}\n    - namespaceSelector: {}\n  egress:\n  - to:\n    - podSelector: {}\n",
})

case("components-run-after-own-generators", {
    "kustomization.yaml": "resources: [c.yaml]\ncomponents: [comp]\nconfigMapGenerator:\n- name: gen\n  literals: [A=1]\n",
    "c.yaml": CM,
    "comp/kustomization.yaml": "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\nconfigMapGenerator:\n- name: fromcomp\n  literals: [B=2]\npatches:\n- target: {kind: ConfigMap}\n  patch: |-\n    - op: add\n      path: /data/patched\n      value: \"yes\"\n",
})

case("error-several-kustomization-files", {
    "kustomization.yaml": "resources: [c.yaml]\n", "kustomization.yml": "resources: [c.yaml]\n", "c.yaml": CM,
}, error="multiple kustomization files")
case("error-empty-strategic-merge-patch-file", {
    "kustomization.yaml": "resources: [c.yaml]\npatchesStrategicMerge: [p.yaml]\n", "c.yaml": CM, "p.yaml": "",
}, error="holds no patch")
case("error-component-with-kustomization-api-version", {
    "kustomization.yaml": "resources: [c.yaml]\ncomponents: [comp]\n", "c.yaml": CM,
    "comp/kustomization.yaml": "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Component\nnamePrefix: x-\n",
}, error="apiVersion for Component should be kustomize.config.k8s.io/v1alpha1")
case("error-kustomization-with-component-api-version", {
    "kustomization.yaml": "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Kustomization\nresources: [c.yaml]\n", "c.yaml": CM,
}, error="apiVersion for Kustomization should be kustomize.config.k8s.io/v1beta1")

case("error-generators-default-namespace-collide", {
    "kustomization.yaml": "configMapGenerator:\n- name: g\n  literals: [A=1]\n- name: g\n  namespace: default\n  literals: [B=1]\n",
}, error="already exists")
case("error-resources-default-namespace-collide", {
    "kustomization.yaml": "resources: [a.yaml, b.yaml]\n",
    "a.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
    "b.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, namespace: default}\n",
}, error="already registered id")

case("nameref-role-resource-names-and-policy-bindings", {
    "kustomization.yaml": "resources: [r.yaml]\nnamePrefix: p-\nconfigMapGenerator:\n- name: cfg\n  literals: [A=1]\nsecretGenerator:\n- name: sec\n  literals: [B=2]\npatches:\n- target: {kind: Role, name: reader}\n  options: {allowNameChange: true}\n  patch: |-\n    apiVersion: rbac.authorization.k8s.io/v1\n    kind: Role\n    metadata:\n      name: reader-renamed\n",
    "r.yaml": "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: reader\nrules:\n- apiGroups: [\"\"]\n  resources: [configmaps]\n  resourceNames: [cfg]\n  verbs: [get]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: creader\nrules:\n- apiGroups: [\"\"]\n  resources: [configmaps, secrets]\n  resourceNames: [cfg, sec, other]\n  verbs: [get]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: rb\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: reader}\nsubjects: [{kind: User, name: u}]\n---\napiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingAdmissionPolicy\nmetadata:\n  name: pol\nspec:\n  validations: [{expression: \"true\"}]\n---\napiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingAdmissionPolicyBinding\nmetadata:\n  name: polb\nspec:\n  policyName: pol\n  validationActions: [Deny]\n",
})

case("generator-replace-keeps-base-prefix-and-metadata", {
    "base/kustomization.yaml": "namePrefix: b-\ncommonLabels: {tier: base}\ncommonAnnotations: {note: base}\nconfigMapGenerator:\n- name: cm\n  literals: [A=1]\n",
    "overlay/kustomization.yaml": "resources: [../base]\nnamePrefix: o-\nconfigMapGenerator:\n- name: cm\n  behavior: replace\n  literals: [B=2]\n  options:\n    labels: {added: here}\n",
}, build="overlay")

case("nameref-diamond-each-overlay-its-own", {
    "base/kustomization.yaml": "resources: [sa.yaml, pod.yaml]\n",
    "base/sa.yaml": "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: sa\n",
    "base/pod.yaml": "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  serviceAccountName: sa\n  containers: [{name: c, image: i}]\n",
    "a/kustomization.yaml": "resources: [../base]\nnamePrefix: a-\n",
    "b/kustomization.yaml": "resources: [../base]\nnamePrefix: b-\n",
    "top/kustomization.yaml": "resources: [../a, ../b]\n",
}, build="top")

case("patch-finds-a-resource-by-its-original-name-and-kind", {
    "kustomization.yaml": "resources: [c.yaml]\npatches:\n- target: {kind: ConfigMap, name: plain}\n  options: {allowNameChange: true, allowKindChange: true}\n  patch: |-\n    apiVersion: v1\n    kind: Secret\n    metadata:\n      name: renamed\n- target: {kind: ConfigMap, name: plain}\n  patch: |-\n    - op: add\n      path: /metadata/labels\n      value: {second: \"yes\"}\n- patch: |-\n    apiVersion: v1\n    kind: ConfigMap\n    metadata:\n      name: plain\n      annotations: {third: \"yes\"}\n",
    "c.yaml": CM,
})

case("error-patch-ambiguous-across-namespaces", {
    "kustomization.yaml": "resources: [c.yaml]\npatches:\n- patch: |-\n    apiVersion: v1\n    kind: ConfigMap\n    metadata:\n      name: x\n    data: {b: \"2\"}\n",
    "c.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, namespace: a}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, namespace: b}\n",
}, error="failed to find unique target")
case("patch-without-namespace-finds-the-one-resource", {
    "base/kustomization.yaml": "namespace: apps\nresources: [c.yaml]\n",
    "base/c.yaml": CM,
    "overlay/kustomization.yaml": "resources: [../base]\npatches:\n- patch: |-\n    apiVersion: v1\n    kind: ConfigMap\n    metadata:\n      name: plain\n    data: {b: \"2\"}\n",
}, build="overlay")

case("error-sort-options-legacy-with-fifo", {
    "kustomization.yaml": "resources: [c.yaml]\nsortOptions:\n  order: fifo\n  legacySortOptions: {orderFirst: [ConfigMap]}\n", "c.yaml": CM,
}, error="legacySortOptions is set")
case("error-sort-options-without-order", {
    "kustomization.yaml": "resources: [c.yaml]\nsortOptions:\n  legacySortOptions: {orderFirst: [ConfigMap]}\n", "c.yaml": CM,
}, error="it must be legacy or fifo")

case("labels-with-field-specs", {
    "kustomization.yaml": "resources: [c.yaml]\nlabels:\n- pairs: {team: web}\n  fields:\n  - path: spec/selector/matchLabels\n    kind: Custom\n    create: true\n  - path: spec/extra/labels\n    kind: Custom\n  - path: data/labels\n    create: true\n  - path: spec/items[]/labels\n    kind: Custom\n    create: true\n  - path: spec/other\n    kind: Custom\n    group: other.io\n    create: true\n",
    "c.yaml": "apiVersion: example.com/v1\nkind: Custom\nmetadata:\n  name: c\nspec:\n  items:\n  - name: a\n  - name: b\n    labels: {x: z}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: m\n",
})

# buildMetadata: the root's options, relative origins of files and
# generators (in a base, in a directory resource), kubectl's managed-by.
case("build-metadata-origins-and-managed-by", {
    "base/kustomization.yaml": "resources: [cm.yaml]\nconfigMapGenerator:\n- name: gen\n  literals: [x=1]\nsecretGenerator:\n- name: pw\n  literals: [p=2]\n",
    "base/cm.yaml": CM,
    "overlay/kustomization.yaml": "resources:\n- ../base\n- dir/two.yaml\nbuildMetadata: [managedByLabel, originAnnotations, notAnOption]\nnamePrefix: o-\nconfigMapGenerator:\n- name: top\n  literals: [y=2]\n",
    "overlay/dir/two.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: b\n  annotations:\n    keep: \"yes\"\n  labels:\n    app.kubernetes.io/managed-by: me\n",
}, build="overlay")
case("build-metadata-of-a-base-is-not-read", {
    "base/kustomization.yaml": "resources: [cm.yaml]\nbuildMetadata: [managedByLabel, originAnnotations]\n",
    "base/cm.yaml": CM,
    "overlay/kustomization.yaml": "resources: [../base]\n",
}, build="overlay")

# Folded scalars with more-indented lines, as go-yaml reads them (one line
# break more before a more-indented line than the YAML spec gives).
case("folded-scalars-with-more-indented-lines", {
    "kustomization.yaml": "resources: [cm.yaml]\n",
    "cm.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  a: >-\n    first line\n    second\n      indented more\n    back\n\n    after blank\n  b: >-\n    a\n\n      b\n  c: >-\n    a\n\n    b\n      c\n\n      d\n    e\n  d: |-\n    lit\n      more\n    x\n  e: >\n    a\n      b\n    c\n\n  f: >+\n    a\n      b\n\n",
})

# Nested field names match case-insensitively, as Go's JSON decoder
# matches struct fields; data maps keep their keys.
case("nested-field-names-match-case-insensitively", {
    "kustomization.yaml": "resources: [deploy.yaml]\nimages:\n- Name: nginx\n  newtag: \"2.0\"\nconfigMapGenerator:\n- Name: gen\n  LITERALS: [a=1]\n  Options:\n    DisableNameSuffixHash: true\n    Labels: {Team: Web}\nreplicas:\n- NAME: web\n  Count: 3\npatches:\n- Target: {Kind: Deployment}\n  Patch: |-\n    - op: add\n      path: /metadata/labels\n      value: {Patched: \"yes\"}\n",
    "deploy.yaml": DEPLOY,
})

# Name references as kustomize picks them: a namespaced referrer only
# looks in its own namespace (none there: the reference stays), an
# object not renamed counts as much as a renamed one, and a reference
# that could be several objects with different names is refused.
AMBIGUOUS_RESOURCES = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm\n  namespace: a\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm\n  namespace: b\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: POD_NS\nspec:\n  containers:\n  - name: x\n    image: x\n    envFrom:\n    - configMapRef:\n        name: cm\n"
case("reference-to-objects-of-other-namespaces-stays", {
    "kustomization.yaml": "resources: [r.yaml]\nnameSuffix: -s\n",
    "r.yaml": AMBIGUOUS_RESOURCES.replace("POD_NS", "c"),
})
case("reference-keeps-to-its-namespace-object-not-renamed", {
    "kustomization.yaml": "resources: [r.yaml]\npatches:\n- target: {kind: ConfigMap, namespace: b}\n  patch: |-\n    - op: replace\n      path: /metadata/name\n      value: renamed-b\n",
    "r.yaml": AMBIGUOUS_RESOURCES.replace("POD_NS", "a"),
})
case("error-ambiguous-reference", {
    "kustomization.yaml": "resources: [role.yaml]\nconfigMapGenerator:\n- name: cm\n  namespace: a\n  literals: [x=1]\n- name: cm\n  namespace: b\n  literals: [x=2]\n",
    "role.yaml": "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: r\nrules:\n- apiGroups: [\"\"]\n  resources: [configmaps]\n  resourceNames: [cm]\n  verbs: [get]\n",
}, error="found multiple possible referrals")

# A webhook's service is a name reference, in the namespace it names; an
# APIService's is not (kubectl leaves it).
case("webhook-and-apiservice-services-follow-renames", {
    "base/kustomization.yaml": "resources: [svc.yaml]\n",
    "base/svc.yaml": "apiVersion: v1\nkind: Service\nmetadata:\n  name: svc\nspec:\n  ports: [{port: 443}]\n",
    "a/kustomization.yaml": "resources: [../base]\nnamespace: na\nnamePrefix: a-\n",
    "b/kustomization.yaml": "resources: [../base]\nnamespace: nb\nnamePrefix: b-\n",
    "top/kustomization.yaml": "resources: [../a, ../b, hooks.yaml]\n",
    "top/hooks.yaml": "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingWebhookConfiguration\nmetadata:\n  name: hook\nwebhooks:\n- name: h.example.com\n  clientConfig:\n    service:\n      name: svc\n      namespace: na\n  admissionReviewVersions: [v1]\n  sideEffects: None\n- name: g.example.com\n  clientConfig:\n    service:\n      name: svc\n      namespace: nb\n  admissionReviewVersions: [v1]\n  sideEffects: None\n---\napiVersion: apiregistration.k8s.io/v1\nkind: APIService\nmetadata:\n  name: v1.example.com\nspec:\n  group: example.com\n  version: v1\n  groupPriorityMinimum: 100\n  versionPriority: 10\n  service:\n    name: svc\n    namespace: nb\n",
}, build="top")

# configurations: nameReference entries teach name references of other
# kinds, lists on the path walked into; a base's apply to the overlay's
# build too.
MYKIND = "apiVersion: example.com/v1\nkind: MyKind\nmetadata:\n  name: m\nspec:\n  serviceName: web\n  backends:\n  - service: web\n  - service: other\n"
NAMEREF_CONFIG = "nameReference:\n- kind: Service\n  version: v1\n  fieldSpecs:\n  - kind: MyKind\n    group: example.com\n    path: spec/serviceName\n  - kind: MyKind\n    path: spec/backends/service\n"
case("configurations-name-reference", {
    "kustomization.yaml": "resources: [svc.yaml, mk.yaml]\nnamePrefix: p-\nconfigurations: [conf.yaml]\n",
    "svc.yaml": SERVICE,
    "mk.yaml": MYKIND,
    "conf.yaml": NAMEREF_CONFIG,
})
case("configurations-of-a-base-apply-to-the-overlay", {
    "base/kustomization.yaml": "resources: [svc.yaml, mk.yaml]\nconfigurations: [conf.yaml]\n",
    "base/svc.yaml": SERVICE,
    "base/mk.yaml": MYKIND,
    "base/conf.yaml": NAMEREF_CONFIG,
    "overlay/kustomization.yaml": "resources: [../base]\nnameSuffix: -o\n",
}, build="overlay")

# vars: $(NAME) in the var-reference fields, from a field of an object read
# after every transformation (a prefix, a generated name's hash);
# `$$` escapes, unknown names stay, a lone var keeps its type.
case("vars-replace-var-references", {
    "kustomization.yaml": "resources: [svc.yaml, d.yaml]\nnamePrefix: p-\nvars:\n- name: SVC\n  objref: {kind: Service, name: web, apiVersion: v1}\n- name: PORT\n  objref: {kind: Service, name: web, apiVersion: v1}\n  fieldref:\n    fieldpath: spec.ports[0].port\n- name: UNUSED\n  objref: {kind: Service, name: web, apiVersion: v1}\n",
    "svc.yaml": "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  ports: [{port: 8080}]\n",
    "d.yaml": "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\n  annotations:\n    a: \"$(SVC)\"\nspec:\n  template:\n    spec:\n      containers:\n      - name: c\n        image: x\n        args: [\"--svc=$(SVC):$(PORT)\", \"$(NOPE)\", \"$$(SVC)\", \"$(PORT)\"]\n        env:\n        - name: E\n          value: $(PORT)\n",
})
case("vars-of-a-base-see-the-overlay-and-generated-names", {
    "base/kustomization.yaml": "resources: [pod.yaml]\nconfigMapGenerator:\n- name: cfg\n  literals: [a=1]\nvars:\n- name: CFG\n  objref: {kind: ConfigMap, name: cfg, apiVersion: v1}\n",
    "base/pod.yaml": "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  labels:\n    cfg: $(CFG)\nspec:\n  containers:\n  - name: c\n    image: x\n    command: [run, --config=$(CFG)]\n",
    "overlay/kustomization.yaml": "resources: [../base]\nnamePrefix: o-\n",
}, build="overlay")
case("error-var-without-its-object", {
    "kustomization.yaml": "resources: [pod.yaml]\nvars:\n- name: X\n  objref: {kind: Service, name: missing, apiVersion: v1}\n",
    "pod.yaml": "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - name: c\n    image: x\n    args: [\"$(X)\"]\n",
}, error="cannot be mapped to a field in the set of known resources")

# transformers: builtin transformer configurations run after the
# kustomization's own, in order (prefix/suffix, labels and annotations
# at their field specs, images, replicas, patches).
case("builtin-transformers-after-the-kustomizations-own", {
    "kustomization.yaml": "resources: [cm.yaml, d.yaml]\nnamePrefix: k-\ntransformers: [t.yaml, t2.yaml]\n",
    "cm.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n",
    "d.yaml": "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  template:\n    spec:\n      containers:\n      - name: web\n        image: nginx:1.0\n",
    "t.yaml": 'apiVersion: builtin\nkind: PrefixSuffixTransformer\nmetadata:\n  name: ps\nprefix: x-\nsuffix: -s\nfieldSpecs:\n- path: metadata/name\n---\napiVersion: builtin\nkind: LabelTransformer\nmetadata:\n  name: l\nlabels:\n  team: a\nfieldSpecs:\n- path: metadata/labels\n  create: true\n- path: data/sel\n  create: true\n---\napiVersion: builtin\nkind: AnnotationsTransformer\nmetadata:\n  name: an\nannotations:\n  note: hi\nfieldSpecs:\n- path: metadata/annotations\n  create: true\n',
    "t2.yaml": 'apiVersion: builtin\nkind: ImageTagTransformer\nmetadata:\n  name: img\nimageTag:\n  name: nginx\n  newTag: "9"\n---\napiVersion: builtin\nkind: ReplicaCountTransformer\nmetadata:\n  name: rc\nreplica:\n  name: web\n  count: 4\nfieldSpecs:\n- path: spec/replicas\n  create: true\n  kind: Deployment\n---\napiVersion: builtin\nkind: PatchTransformer\nmetadata:\n  name: p\ntarget:\n  kind: Deployment\npatch: |-\n  - op: add\n    path: /metadata/annotations\n    value: {patched: "yes"}\n',
})

# generators: builtin generator configurations, named by their metadata.
case("builtin-generators", {
    "kustomization.yaml": "generators: [g.yaml]\nconfigMapGenerator:\n- name: own\n  literals: [o=1]\nnamePrefix: p-\n",
    "g.yaml": 'apiVersion: builtin\nkind: ConfigMapGenerator\nmetadata:\n  name: fromplugin\n  namespace: ns1\nliterals: [a=1, b=2]\noptions:\n  labels: {made: plugin}\n---\napiVersion: builtin\nkind: SecretGenerator\nmetadata:\n  name: sec\ntype: Opaque\nliterals: [p=x]\n',
})

# transformers: / generators: entries may be inline configurations, or
# directories whose kustomization's resources are the configurations.
case("builtin-configs-inline", {
    "kustomization.yaml": k('''
        resources: [cm.yaml]
        generators:
        - |-
          apiVersion: builtin
          kind: ConfigMapGenerator
          metadata:
            name: inline
          literals: [FRUIT=apple]
        transformers:
        - |-
          apiVersion: builtin
          kind: NamespaceTransformer
          metadata:
            name: ns
            namespace: moved
          fieldSpecs:
          - path: metadata/namespace
            create: true
        - |-
          apiVersion: builtin
          kind: PrefixSuffixTransformer
          metadata:
            name: ps
          prefix: baked-
          suffix: -pie
          fieldSpecs:
          - path: metadata/name
        '''),
    "cm.yaml": CM,
})
case("builtin-configs-from-a-directory", {
    "app/kustomization.yaml": k('''
        resources: [cm.yaml]
        generators: [../gen]
        transformers: [../xform]
        '''),
    "app/cm.yaml": CM,
    "gen/kustomization.yaml": "resources: [g.yaml]\n",
    "gen/g.yaml": "apiVersion: builtin\nkind: ConfigMapGenerator\nmetadata:\n  name: generated\nliterals: [a=1]\n",
    "xform/kustomization.yaml": "resources: [labels.yaml]\n",
    "xform/labels.yaml": "apiVersion: builtin\nkind: LabelTransformer\nmetadata:\n  name: l\nlabels:\n  team: a\nfieldSpecs:\n- path: metadata/labels\n  create: true\n",
}, build="app")

# A key given twice: refused in a resource (kyaml), the last one kept in a
# kustomization file (read with sigs.k8s.io/yaml).
case("duplicate-key-in-a-resource", {
    "kustomization.yaml": "resources: [cm.yaml]\n",
    "cm.yaml": 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\ndata:\n  a: "1"\n  a: "2"\n',
}, error="duplicate key `a`")
case("duplicate-key-in-a-kustomization-keeps-the-last", {
    "kustomization.yaml": k('''
        namePrefix: first-
        configMapGenerator:
        - name: bob
          literals: [bean=pinto]
          literals: [fruit=apple]
        namePrefix: second-
        '''),
})

# A builtin generator configuration's own `name` wins over its metadata's;
# origins name the configuration, and a replacing generator is the origin.
case("builtin-generator-name-and-origins", {
    "kustomization.yaml": "generators: [g.yaml]\nbuildMetadata: [originAnnotations]\n",
    "g.yaml": "apiVersion: builtin\nkind: ConfigMapGenerator\nmetadata:\n  name: notImportantHere\nname: bob\nliterals: [fruit=apple]\n",
})
case("generator-replace-is-the-origin", {
    "base/kustomization.yaml": "configMapGenerator:\n- name: bob\n  literals: [fruit=apple]\n",
    "overlay/kustomization.yaml": k('''
        resources: [../base]
        configMapGenerator:
        - name: bob
          behavior: replace
          literals: [month=12]
        buildMetadata: [originAnnotations]
        '''),
}, build="overlay")

# Mapping references (RBAC subjects, webhook services): candidates by the
# namespace they name (first the one an object had, then the one it has),
# and both name and namespace taken from the chosen object.
case("nameref-subject-takes-the-accounts-namespace", {
    "app/kustomization.yaml": "namespace: apps\nnamePrefix: p-\nresources: [sa.yaml]\n",
    "app/sa.yaml": "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: runner\n",
    "kustomization.yaml": "resources: [app, crb.yaml]\n",
    "crb.yaml": "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: crb\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}\nsubjects:\n- {kind: ServiceAccount, name: runner}\n- {kind: ServiceAccount, name: other, namespace: elsewhere}\n",
})
case("nameref-subject-in-two-namespaces-is-ambiguous", {
    "a/kustomization.yaml": "namespace: a\nresources: [r.yaml]\n",
    "a/r.yaml": "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: sa\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: crb-a\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cr}\nsubjects:\n- {kind: ServiceAccount, name: sa}\n",
    "b/kustomization.yaml": "namespace: b\nresources: [r.yaml]\n",
    "b/r.yaml": "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: sa\n",
    "kustomization.yaml": "resources: [a, b]\n",
}, error="found multiple possible referrals")
case("rolebinding-subject-with-a-blank-namespace", {
    "kustomization.yaml": "resources: [r.yaml]\n",
    "r.yaml": "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: test\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: test\nrules: []\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: test\nsubjects:\n- kind: ServiceAccount\n  name: test\n  namespace:\nroleRef: {kind: Role, name: test, apiGroup: rbac.authorization.k8s.io}\n",
}, error="namespace is blank for resource")
case("namespace-leaves-other-webhook-services", {
    "kustomization.yaml": "namespace: newns\nnamePrefix: p-\nresources: [r.yaml]\n",
    "r.yaml": "apiVersion: admissionregistration.k8s.io/v1\nkind: MutatingWebhookConfiguration\nmetadata:\n  name: hooks\nwebhooks:\n- name: ours.example.com\n  clientConfig:\n    service: {name: svc, namespace: oldns}\n- name: theirs.example.com\n  clientConfig:\n    service: {name: external, namespace: random}\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: svc\n  namespace: oldns\n",
})
case("nameref-ingress-service-name-v1beta1", {
    "kustomization.yaml": "namePrefix: k-\nresources: [r.yaml]\n",
    "r.yaml": "apiVersion: v1\nkind: Service\nmetadata:\n  name: nginx\n---\napiVersion: networking.k8s.io/v1beta1\nkind: Ingress\nmetadata:\n  name: web\nspec:\n  backend: {serviceName: nginx, servicePort: 80}\n  rules:\n  - http:\n      paths:\n      - path: /\n        backend: {serviceName: nginx, servicePort: 80}\n",
})

# More builtin configurations: the GKE IAMPolicyGenerator, and the
# ReplacementTransformer through transformers:.
case("builtin-iam-policy-generator-and-replacements", {
    "kustomization.yaml": k('''
        resources: [cm.yaml]
        generators:
        - |-
          apiVersion: builtin
          kind: IAMPolicyGenerator
          metadata:
            name: gke
          cloud: gke
          kubernetesService: {namespace: apps, name: runner}
          serviceAccount: {name: gsa, projectId: my-project}
        transformers: [r.yaml]
        '''),
    "cm.yaml": CM,
    "r.yaml": "apiVersion: builtin\nkind: ReplacementTransformer\nmetadata:\n  name: r\nreplacements:\n- source: {kind: ServiceAccount, fieldPath: metadata.name}\n  targets:\n  - select: {kind: ConfigMap}\n    fieldPaths: [data.a]\n",
})
# vars: the fields configurations' varReference adds, a Deployment's pod
# template annotations, and a CronJob's NFS server at kustomize's path.
case("vars-in-configured-and-default-fields", {
    "kustomization.yaml": k('''
        resources: [r.yaml]
        configurations: [varrefs.yaml]
        vars:
        - name: SVC
          objref: {kind: Service, name: web, apiVersion: v1}
        '''),
    "varrefs.yaml": "varReference:\n- path: data/url\n  kind: ConfigMap\n",
    "r.yaml": k('''
        apiVersion: v1
        kind: Service
        metadata: {name: web}
        ---
        apiVersion: v1
        kind: ConfigMap
        metadata: {name: c}
        data: {url: "http://$(SVC)/", other: "$(SVC)"}
        ---
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: d}
        spec:
          template:
            metadata:
              annotations: {target: "$(SVC)"}
            spec:
              containers: [{name: c, image: x}]
        ---
        apiVersion: batch/v1
        kind: CronJob
        metadata: {name: j}
        spec:
          schedule: "* * * * *"
          jobTemplate:
            spec:
              template:
                volumes: [{name: v, nfs: {server: "$(SVC).local", path: /}}]
                spec:
                  containers: [{name: c, image: x}]
        '''),
})

# openapi: a custom schema gives a custom kind's lists their merge keys;
# the first
# kustomization loaded that names one decides, `version: v1.21.2` being
# the built-in schema; both, or another version, are refused.
SCHEMA = '''{"definitions": {
  "v1alpha1.Thing": {"type": "object",
    "properties": {"spec": {"type": "object", "properties": {
      "workers": {"type": "array", "items": {"$ref": "#/definitions/Worker"},
        "x-kubernetes-patch-merge-key": "id", "x-kubernetes-patch-strategy": "merge"}}}},
    "x-kubernetes-group-version-kind": [{"group": "example.com", "kind": "Thing", "version": "v1alpha1"}]},
  "Worker": {"type": "object", "properties": {"id": {"type": "string"}, "size": {"type": "integer"}}}
}}
'''
THING = '''apiVersion: example.com/v1alpha1
kind: Thing
metadata:
  name: t
spec:
  workers:
  - {id: a, size: 1}
  - {id: b, size: 2}
'''
THING_PATCH = '''patches:
- patch: |-
    apiVersion: example.com/v1alpha1
    kind: Thing
    metadata: {name: t}
    spec:
      workers:
      - {id: b, size: 5}
'''
case("openapi-custom-schema-merge-keys", {
    "kustomization.yaml": "resources: [t.yaml]\nopenapi:\n  path: schema.json\n" + THING_PATCH,
    "t.yaml": THING,
    "schema.json": SCHEMA,
})
case("openapi-overlay-version-takes-precedence", {
    "base/kustomization.yaml": "resources: [t.yaml]\nopenapi:\n  path: schema.json\n",
    "base/t.yaml": THING,
    "base/schema.json": SCHEMA,
    "overlay/kustomization.yaml": "resources: [../base]\nopenapi:\n  version: v1.21.2\n" + THING_PATCH,
}, build="overlay")
case("openapi-schema-from-a-base", {
    "base/kustomization.yaml": "resources: [t.yaml]\nopenapi:\n  path: schema.json\n",
    "base/t.yaml": THING,
    "base/schema.json": SCHEMA,
    "overlay/kustomization.yaml": "resources: [../base]\n" + THING_PATCH,
}, build="overlay")
case("error-openapi-path-and-version", {
    "kustomization.yaml": "resources: [t.yaml]\nopenapi:\n  path: schema.json\n  version: v1.21.2\n",
    "t.yaml": THING,
    "schema.json": SCHEMA,
}, error="cannot use both")
case("error-openapi-unknown-version", {
    "kustomization.yaml": "resources: [t.yaml]\nopenapi:\n  version: v1.14.1\n",
    "t.yaml": THING,
}, error="v1.14.1")

# Round 2, part 2: builtin plugin configurations and their fieldSpecs,
# replacements, vars and configurations, openapi and crds schemas,
# buildMetadata, name references (RBAC, webhooks, ingress), components,
# patches, sorting, labels, images, replicas, namespaces, YAML details,
# and errors kubectl gives.
APPDEP = DEPLOY.replace("        ports: [{containerPort: 80}]\n", "        envFrom: [{configMapRef: {name: settings}}]\n      volumes:\n      - name: conf\n        configMap: {name: settings}\n")

# PatchStrategicMergeTransformer: patch files (`paths`) and an inline
# `patches` string; PatchJson6902Transformer: an ops file and `jsonOp`.
case("builtin-patch-strategic-merge-transformer", {
    "kustomization.yaml": "resources: [d.yaml]\ntransformers: [smp.yaml]\n",
    "d.yaml": DEPLOY,
    "smp.yaml": k("""
    apiVersion: builtin
    kind: PatchStrategicMergeTransformer
    metadata:
      name: tune-web
    paths: [more-replicas.yaml]
    patches: |-
      apiVersion: apps/v1
      kind: Deployment
      metadata:
        name: web
      spec:
        template:
          spec:
            containers:
            - name: web
              env:
              - {name: MODE, value: fast}
    """),
    "more-replicas.yaml": "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 3\n",
})
case("builtin-patch-json6902-transformer", {
    "kustomization.yaml": "resources: [all.yaml]\ntransformers: [ops.yaml]\n",
    "all.yaml": DEPLOY + "---\n" + SERVICE,
    "ops.yaml": k("""
    apiVersion: builtin
    kind: PatchJson6902Transformer
    metadata:
      name: deploy-ops
    target:
      group: apps
      version: v1
      kind: Deployment
      name: web
    path: deploy-ops.yaml
    ---
    apiVersion: builtin
    kind: PatchJson6902Transformer
    metadata:
      name: svc-ops
    target:
      version: v1
      kind: Service
      name: web
    jsonOp: '[{"op": "add", "path": "/spec/type", "value": "NodePort"}]'
    """),
    "deploy-ops.yaml": "- op: copy\n  from: /spec/template/spec/containers/0/image\n  path: /spec/template/metadata/labels/image\n- op: move\n  from: /spec/template/metadata/labels/app\n  path: /spec/template/metadata/labels/application\n",
})

# LabelTransformer with fieldSpecs of its own: only where they say.
case("builtin-label-transformer-selective-field-specs", {
    "kustomization.yaml": "resources: [all.yaml]\ntransformers: [labels.yaml]\n",
    "all.yaml": DEPLOY + "---\n" + SERVICE + "---\n" + CM,
    "labels.yaml": k("""
    apiVersion: builtin
    kind: LabelTransformer
    metadata:
      name: stack
    labels:
      stack: media
    fieldSpecs:
    - path: metadata/labels
      kind: Deployment
      create: true
    - path: spec/selector/matchLabels
      kind: Deployment
      create: true
    - path: spec/template/metadata/labels
      kind: Deployment
      create: true
    - path: spec/selector
      kind: Service
      version: v1
      create: true
    - path: data
      kind: ConfigMap
    """),
})

# NamespaceTransformer options: unsetOnly, setRoleBindingSubjects.
case("builtin-namespace-transformer-unset-only", {
    "kustomization.yaml": "resources: [r.yaml]\ntransformers: [ns.yaml]\n",
    "r.yaml": k("""
    apiVersion: v1
    kind: ConfigMap
    metadata: {name: placed, namespace: keep}
    ---
    apiVersion: v1
    kind: ConfigMap
    metadata: {name: loose}
    ---
    apiVersion: rbac.authorization.k8s.io/v1
    kind: RoleBinding
    metadata: {name: rb}
    roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: r}
    subjects:
    - {kind: ServiceAccount, name: default, namespace: default}
    - {kind: ServiceAccount, name: bot, namespace: tools}
    """),
    "ns.yaml": k("""
    apiVersion: builtin
    kind: NamespaceTransformer
    metadata:
      name: fallback
      namespace: fallback
    unsetOnly: true
    setRoleBindingSubjects: none
    fieldSpecs:
    - path: metadata/namespace
      create: true
    """),
})
case("builtin-namespace-transformer-all-service-accounts", {
    "kustomization.yaml": "resources: [r.yaml]\ntransformers: [ns.yaml]\n",
    "r.yaml": k("""
    apiVersion: rbac.authorization.k8s.io/v1
    kind: ClusterRoleBinding
    metadata: {name: crb}
    roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}
    subjects:
    - {kind: ServiceAccount, name: default, namespace: default}
    - {kind: ServiceAccount, name: bot, namespace: tools}
    - {kind: ServiceAccount, name: lone}
    - {kind: Group, name: admins, apiGroup: rbac.authorization.k8s.io}
    ---
    apiVersion: v1
    kind: ServiceAccount
    metadata: {name: bot}
    """),
    "ns.yaml": k("""
    apiVersion: builtin
    kind: NamespaceTransformer
    metadata:
      name: everything
      namespace: media
    setRoleBindingSubjects: allServiceAccounts
    fieldSpecs:
    - path: metadata/namespace
      create: true
    """),
})
case("error-builtin-namespace-transformer-bad-subjects-mode", {
    "kustomization.yaml": "resources: [c.yaml]\ntransformers: [ns.yaml]\n", "c.yaml": CM,
    "ns.yaml": "apiVersion: builtin\nkind: NamespaceTransformer\nmetadata:\n  name: ns\n  namespace: x\nsetRoleBindingSubjects: everyone\n",
}, error="everyone")

# ImageTagTransformer: the usual container fields, plus its fieldSpecs
# in a custom kind; ReplicaCountTransformer at a custom kind's field.
case("builtin-image-tag-transformer-custom-field-specs", {
    "kustomization.yaml": "resources: [r.yaml]\ntransformers: [img.yaml]\n",
    "r.yaml": DEPLOY.replace("nginx:1.0", "redis:7.2") + "---\n" + k("""
    apiVersion: cache.example.com/v1
    kind: CacheCluster
    metadata: {name: cache}
    spec:
      cache:
        image: redis:7.2
      exporter:
        image: redis:7.2
    """),
    "img.yaml": k("""
    apiVersion: builtin
    kind: ImageTagTransformer
    metadata:
      name: valkey
    imageTag:
      name: redis
      newName: valkey/valkey
      newTag: "8.0"
    fieldSpecs:
    - path: spec/cache/image
      kind: CacheCluster
    """),
})
case("builtin-replica-count-transformer-custom-kind", {
    "kustomization.yaml": "resources: [r.yaml]\ntransformers: [rc.yaml]\n",
    "r.yaml": DEPLOY.replace("name: web\nspec", "name: cluster\nspec") + "---\n" + k("""
    apiVersion: postgres.example.com/v1
    kind: PostgresCluster
    metadata: {name: cluster}
    spec:
      version: 16
    """),
    "rc.yaml": k("""
    apiVersion: builtin
    kind: ReplicaCountTransformer
    metadata:
      name: pg
    replica:
      name: cluster
      count: 3
    fieldSpecs:
    - path: spec/instances
      kind: PostgresCluster
      create: true
    """),
})

# A prefix only on ConfigMaps; the Deployment's references follow.
case("builtin-prefix-on-config-maps-only-references-follow", {
    "kustomization.yaml": "resources: [d.yaml, cm.yaml]\ntransformers: [ps.yaml]\n",
    "d.yaml": APPDEP,
    "cm.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  A: \"1\"\n",
    "ps.yaml": "apiVersion: builtin\nkind: PrefixSuffixTransformer\nmetadata:\n  name: cm-only\nprefix: cfg-\nsuffix: -v1\nfieldSpecs:\n- path: metadata/name\n  kind: ConfigMap\n",
})
case("builtin-annotations-transformer-custom-field-specs", {
    "kustomization.yaml": "resources: [r.yaml]\ntransformers: [ann.yaml]\n",
    "r.yaml": CM + "---\n" + k("""
    apiVersion: monitoring.coreos.com/v1
    kind: Prometheus
    metadata: {name: prom}
    spec:
      podMetadata:
        labels: {app: prom}
    """),
    "ann.yaml": k("""
    apiVersion: builtin
    kind: AnnotationsTransformer
    metadata:
      name: backup
    annotations:
      backup.example.com/schedule: daily
    fieldSpecs:
    - path: spec/podMetadata/annotations
      kind: Prometheus
      create: true
    - path: metadata/annotations
      kind: ConfigMap
      create: true
    """),
})
# Without fieldSpecs a label or annotation transformer touches nothing; a
# prefix/suffix transformer is refused.
case("builtin-transformers-without-field-specs-do-nothing", {
    "kustomization.yaml": "resources: [d.yaml]\ntransformers: [t.yaml]\n",
    "d.yaml": DEPLOY,
    "t.yaml": "apiVersion: builtin\nkind: LabelTransformer\nmetadata:\n  name: l\nlabels: {a: b}\n---\napiVersion: builtin\nkind: AnnotationsTransformer\nmetadata:\n  name: an\nannotations: {c: d}\n",
})
case("error-builtin-prefix-transformer-without-field-specs", {
    "kustomization.yaml": "resources: [d.yaml]\ntransformers: [t.yaml]\n",
    "d.yaml": DEPLOY,
    "t.yaml": "apiVersion: builtin\nkind: PrefixSuffixTransformer\nmetadata:\n  name: ps\nprefix: nope-\n",
}, error="fieldSpecs")

# SecretGenerator configuration with files, envs, literals and options;
# a ConfigMapGenerator configuration merging into a base's generator.
case("builtin-secret-generator-files-envs-options", {
    "kustomization.yaml": "generators: [sec.yaml]\n",
    "sec.yaml": k("""
    apiVersion: builtin
    kind: SecretGenerator
    metadata:
      name: app-secrets
      namespace: vault
    type: Opaque
    files: [token.txt, renamed.key=key.pem]
    envs: [db.env]
    literals: [MODE=prod]
    options:
      disableNameSuffixHash: true
      labels: {sealed: "no"}
      annotations: {rotated: "2024-01-01"}
    """),
    "token.txt": "t0ken\n", "key.pem": "-----BEGIN KEY-----\nabc\n-----END KEY-----\n", "db.env": "DB_USER=app\nDB_PASS=hunter2\n",
})
case("builtin-configmap-generator-merges-into-base", {
    "base/kustomization.yaml": "resources: [d.yaml]\nconfigMapGenerator:\n- name: settings\n  literals: [A=1, B=2]\n",
    "base/d.yaml": APPDEP,
    "overlay/kustomization.yaml": "resources: [../base]\ngenerators: [merge.yaml]\n",
    "overlay/merge.yaml": "apiVersion: builtin\nkind: ConfigMapGenerator\nmetadata:\n  name: settings\nbehavior: merge\nliterals: [B=20, C=3]\n",
}, build="overlay")

# An overlay's transformer configurations act on its base's objects, and
# name references follow; a component may carry configurations too.
case("builtin-transformers-in-overlay-act-on-base", {
    "base/kustomization.yaml": "resources: [d.yaml]\nconfigMapGenerator:\n- name: settings\n  literals: [A=1]\n",
    "base/d.yaml": APPDEP,
    "overlay/kustomization.yaml": "resources: [../base]\ntransformers: [t.yaml]\n",
    "overlay/t.yaml": "apiVersion: builtin\nkind: PrefixSuffixTransformer\nmetadata:\n  name: ps\nsuffix: -blue\nfieldSpecs:\n- path: metadata/name\n---\napiVersion: builtin\nkind: LabelTransformer\nmetadata:\n  name: l\nlabels: {color: blue}\nfieldSpecs:\n- path: metadata/labels\n  create: true\n",
}, build="overlay")
case("builtin-configs-in-a-component", {
    "base/kustomization.yaml": "resources: [d.yaml]\n", "base/d.yaml": DEPLOY,
    "comp/kustomization.yaml": COMP + k("""
    generators:
    - |-
      apiVersion: builtin
      kind: ConfigMapGenerator
      metadata:
        name: feature-flags
      literals: [NEW_UI=true]
    transformers:
    - |-
      apiVersion: builtin
      kind: AnnotationsTransformer
      metadata:
        name: feature
      annotations: {feature: new-ui}
      fieldSpecs:
      - path: metadata/annotations
        create: true
    """),
    "overlay/kustomization.yaml": "resources: [../base]\ncomponents: [../comp]\n",
}, build="overlay")
# A directory of configurations runs them in its resources' order.
case("builtin-transformer-directory-runs-in-order", {
    "kustomization.yaml": "resources: [c.yaml]\ntransformers: [xforms]\n", "c.yaml": CM,
    "xforms/kustomization.yaml": "resources: [second.yaml, first.yaml]\n",
    "xforms/first.yaml": "apiVersion: builtin\nkind: PrefixSuffixTransformer\nmetadata:\n  name: first\nprefix: one-\nfieldSpecs:\n- path: metadata/name\n",
    "xforms/second.yaml": "apiVersion: builtin\nkind: PrefixSuffixTransformer\nmetadata:\n  name: second\nprefix: two-\nfieldSpecs:\n- path: metadata/name\n",
})
case("builtin-replacement-transformer-with-path", {
    "kustomization.yaml": "resources: [src.yaml, d.yaml]\ntransformers: [rt.yaml]\n",
    "src.yaml": REPSRC, "d.yaml": REPDEP,
    "rt.yaml": "apiVersion: builtin\nkind: ReplacementTransformer\nmetadata:\n  name: r\nreplacements:\n- path: image.yaml\n- source: {kind: ConfigMap, name: src, fieldPath: data.count}\n  targets:\n  - select: {kind: Deployment}\n    fieldPaths: [spec.replicas]\n",
    "image.yaml": "source: {kind: ConfigMap, name: src, fieldPath: data.image}\ntargets:\n- select: {kind: Deployment}\n  fieldPaths: [spec.template.spec.containers.0.image]\n",
})
case("error-exec-plugin-transformer", {
    "kustomization.yaml": "resources: [c.yaml]\ntransformers: [sops.yaml]\n", "c.yaml": CM,
    "sops.yaml": "apiVersion: secrets.example.com/v1\nkind: SopsDecryptor\nmetadata:\n  name: decrypt\nfiles: [secret.enc.yaml]\n",
}, error="SopsDecryptor")
case("error-builtin-unknown-kind", {
    "kustomization.yaml": "resources: [c.yaml]\ntransformers: [t.yaml]\n", "c.yaml": CM,
    "t.yaml": "apiVersion: builtin\nkind: NoSuchTransformer\nmetadata:\n  name: t\n",
}, error="NoSuchTransformer")
case("error-builtin-json6902-transformer-without-target-name", {
    "kustomization.yaml": "resources: [d.yaml]\ntransformers: [t.yaml]\n", "d.yaml": DEPLOY,
    "t.yaml": "apiVersion: builtin\nkind: PatchJson6902Transformer\nmetadata:\n  name: t\ntarget: {kind: Deployment}\njsonOp: '[{\"op\": \"replace\", \"path\": \"/spec/replicas\", \"value\": 2}]'\n",
}, error="target")

# Replacements as homelab repositories use them: a domain into every
# Ingress host (wildcards with a delimiter), a source chosen by its
# namespace, structured values, a file in a component, group/version
# selection with several rejects.
case("replacements-domain-into-ingress-hosts", {
    "kustomization.yaml": k("""
    resources: [domain.yaml, ing.yaml]
    replacements:
    - source:
        kind: ConfigMap
        name: cluster-vars
        fieldPath: data.domain
      targets:
      - select:
          kind: Ingress
        fieldPaths:
        - spec.rules.*.host
        options:
          delimiter: '.'
          index: 1
      - select:
          kind: Ingress
        reject:
        - name: auth
        fieldPaths:
        - spec.tls.*.hosts.*
        options:
          delimiter: '.'
          index: 1
      - select:
          kind: Ingress
          name: grafana
        fieldPaths:
        - metadata.annotations.[external-dns.alpha.kubernetes.io/hostname]
        options:
          create: true
    """),
    "domain.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cluster-vars\ndata:\n  domain: home.example.net\n",
    "ing.yaml": k("""
    apiVersion: networking.k8s.io/v1
    kind: Ingress
    metadata: {name: grafana}
    spec:
      tls:
      - hosts: [grafana.PLACEHOLDER, metrics.PLACEHOLDER]
        secretName: wildcard-tls
      rules:
      - host: grafana.PLACEHOLDER
        http:
          paths:
          - {path: /, pathType: Prefix, backend: {service: {name: grafana, port: {number: 3000}}}}
      - host: metrics.PLACEHOLDER
    ---
    apiVersion: networking.k8s.io/v1
    kind: Ingress
    metadata: {name: auth}
    spec:
      rules:
      - host: auth.PLACEHOLDER
    """),
})
case("replacements-source-by-namespace", {
    "kustomization.yaml": k("""
    resources: [r.yaml]
    replacements:
    - source:
        kind: ConfigMap
        name: settings
        namespace: prod
        fieldPath: data.level
      targets:
      - select:
          kind: Deployment
        reject:
        - namespace: dev
        fieldPaths:
        - spec.template.spec.containers.[name=web].args.0
    - source:
        kind: Deployment
        name: web
        namespace: dev
        fieldPath: spec.template.spec.containers.[image=nginx:1.0].name
      targets:
      - select:
          kind: ConfigMap
          namespace: dev
        fieldPaths: [data.container]
        options: {create: true}
    """),
    "r.yaml": k("""
    apiVersion: v1
    kind: ConfigMap
    metadata: {name: settings, namespace: dev}
    data: {level: debug}
    ---
    apiVersion: v1
    kind: ConfigMap
    metadata: {name: settings, namespace: prod}
    data: {level: warn}
    """) + "---\n" + DEPLOY.replace("  name: web\n", "  name: web\n  namespace: dev\n", 1).replace("        ports:", "        args: [--level=info]\n        ports:") + "---\n" + DEPLOY.replace("  name: web\n", "  name: web\n  namespace: prod\n", 1).replace("        ports:", "        args: [--level=info]\n        ports:"),
})
case("replacements-structured-list-value", {
    "kustomization.yaml": k("""
    resources: [d.yaml, probe.yaml]
    replacements:
    - source:
        kind: Deployment
        name: web
        fieldPath: spec.template.spec.containers.[name=web].ports
      targets:
      - select:
          kind: Probe
        fieldPaths: [spec.endpoints]
        options: {create: true}
    - source:
        kind: Deployment
        name: web
        fieldPath: spec.selector.matchLabels
      targets:
      - select:
          kind: Probe
        fieldPaths: [spec.selector.matchLabels]
        options: {create: true}
    """),
    "d.yaml": DEPLOY.replace("ports: [{containerPort: 80}]", "ports: [{containerPort: 80, name: http}, {containerPort: 9090, name: metrics}]"),
    "probe.yaml": "apiVersion: monitoring.example.com/v1\nkind: Probe\nmetadata:\n  name: web\nspec:\n  interval: 30s\n",
})
case("replacements-from-a-file-in-a-component", {
    "base/kustomization.yaml": "resources: [src.yaml, d.yaml]\n", "base/src.yaml": REPSRC, "base/d.yaml": REPDEP,
    "comp/kustomization.yaml": COMP + "replacements:\n- path: host.yaml\n",
    "comp/host.yaml": k("""
    - source:
        kind: ConfigMap
        name: src
        fieldPath: data.host
      targets:
      - select:
          kind: Deployment
        fieldPaths:
        - spec.template.spec.containers.[name=web].env.[name=HOST].value
    - source:
        kind: ConfigMap
        name: src
        fieldPath: data.port
      targets:
      - select:
          kind: Deployment
        fieldPaths:
        - spec.template.spec.containers.[name=web].env.[name=PORT].value
    """),
    "overlay/kustomization.yaml": "resources: [../base]\ncomponents: [../comp]\nnameSuffix: -x\n",
}, build="overlay")
case("replacements-select-by-group-version-and-rejects", {
    "kustomization.yaml": k("""
    resources: [src.yaml, r.yaml]
    replacements:
    - source:
        kind: ConfigMap
        name: src
        fieldPath: data.port
      targets:
      - select:
          version: v1
          kind: ConfigMap
        reject:
        - name: src
        - namespace: skip
        - labelSelector: frozen=true
        fieldPaths: [data.port]
        options: {create: true}
      - select:
          group: example.com
        fieldPaths: [spec.port]
        options: {create: true}
    """),
    "src.yaml": REPSRC,
    "r.yaml": k("""
    apiVersion: v1
    kind: ConfigMap
    metadata: {name: a}
    ---
    apiVersion: v1
    kind: ConfigMap
    metadata: {name: b, namespace: skip}
    ---
    apiVersion: v1
    kind: ConfigMap
    metadata:
      name: c
      labels: {frozen: "true"}
    ---
    apiVersion: example.com/v1
    kind: Listener
    metadata: {name: l}
    ---
    apiVersion: other.com/v1
    kind: Listener
    metadata: {name: l}
    """),
})
case("error-replacements-missing-path", {
    "kustomization.yaml": "resources: [c.yaml]\nreplacements:\n- path: no-such-replacement.yaml\n", "c.yaml": CM,
}, error="no-such-replacement.yaml")

# vars: fieldrefs into labels and list items; a custom kind's field via
# configurations' varReference; vars declared at two levels.
case("vars-fieldrefs-labels-and-list-items", {
    "kustomization.yaml": k("""
    resources: [d.yaml, cm.yaml]
    vars:
    - name: APP_LABEL
      objref: {kind: Deployment, name: web, apiVersion: apps/v1}
      fieldref: {fieldpath: metadata.labels.app}
    - name: WEB_IMAGE
      objref: {kind: Deployment, name: web, apiVersion: apps/v1}
      fieldref: {fieldpath: "spec.template.spec.containers[0].image"}
    - name: WEB_REPLICAS
      objref: {kind: Deployment, name: web, apiVersion: apps/v1}
      fieldref: {fieldpath: spec.replicas}
    """),
    "d.yaml": DEPLOY.replace("  name: web\nspec:", "  name: web\n  labels: {app: web-app}\nspec:").replace("        ports:", "        command: [run, --label=$(APP_LABEL), --image=$(WEB_IMAGE)]\n        ports:"),
    "cm.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: info\ndata:\n  image: $(WEB_IMAGE)\n  replicas: $(WEB_REPLICAS)\n  label: app=$(APP_LABEL)\n",
})
case("vars-in-a-custom-kind-via-configurations", {
    "kustomization.yaml": "namePrefix: mon-\nresources: [r.yaml]\nconfigurations: [refs.yaml]\nvars:\n- name: TARGET_SVC\n  objref: {kind: Service, name: web, apiVersion: v1}\n",
    "refs.yaml": "varReference:\n- path: spec/targets/url\n  kind: Check\n- path: spec/note\n  kind: Check\n",
    "r.yaml": SERVICE + "---\n" + k("""
    apiVersion: uptime.example.com/v1
    kind: Check
    metadata: {name: ping}
    spec:
      note: checks $(TARGET_SVC)
      other: $(TARGET_SVC)
      targets:
      - url: http://$(TARGET_SVC):80/healthz
      - url: http://$(TARGET_SVC):80/ready
    """),
})
case("vars-declared-in-base-and-overlay", {
    "base/kustomization.yaml": "resources: [svc.yaml, pod.yaml]\nvars:\n- name: BASE_SVC\n  objref: {kind: Service, name: web, apiVersion: v1}\n",
    "base/svc.yaml": SERVICE,
    "base/pod.yaml": "apiVersion: v1\nkind: Pod\nmetadata:\n  name: client\nspec:\n  containers:\n  - name: c\n    image: curl\n    args: [\"$(BASE_SVC)\", \"$(OVERLAY_CM)\"]\n",
    "overlay/kustomization.yaml": "resources: [../base]\nnamePrefix: o-\nconfigMapGenerator:\n- name: extra\n  literals: [A=1]\nvars:\n- name: OVERLAY_CM\n  objref: {kind: ConfigMap, name: extra, apiVersion: v1}\n",
}, build="overlay")
case("error-vars-same-name-at-two-levels", {
    "base/kustomization.yaml": "resources: [svc.yaml]\nvars:\n- name: DUPLICATED_VAR\n  objref: {kind: Service, name: web, apiVersion: v1}\n",
    "base/svc.yaml": SERVICE,
    "overlay/kustomization.yaml": "resources: [../base]\nvars:\n- name: DUPLICATED_VAR\n  objref: {kind: Service, name: web, apiVersion: v1}\n",
}, build="overlay", error="DUPLICATED_VAR")
case("error-var-matches-two-objects", {
    "kustomization.yaml": "resources: [r.yaml]\nvars:\n- name: TWICE\n  objref: {kind: ConfigMap, name: same, apiVersion: v1}\n",
    "r.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: same, namespace: a}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: same, namespace: b}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: c, image: x, args: [\"$(TWICE)\"]}]\n",
}, error="TWICE")

# configurations: commonLabels, images and nameReference for custom kinds.
case("configurations-common-labels-for-a-custom-kind", {
    "kustomization.yaml": "resources: [m.yaml]\ncommonLabels: {team: infra}\nconfigurations: [labels.yaml]\n",
    "labels.yaml": "commonLabels:\n- path: spec/selector/matchLabels\n  kind: ServiceMonitor\n  create: true\n- path: spec/podTargetLabels\n  kind: NotThere\n",
    "m.yaml": "apiVersion: monitoring.coreos.com/v1\nkind: ServiceMonitor\nmetadata:\n  name: web\nspec:\n  endpoints: [{port: http}]\n---\napiVersion: monitoring.coreos.com/v1\nkind: PodMonitor\nmetadata:\n  name: pods\nspec:\n  selector: {}\n",
})
case("configurations-images-at-a-custom-path", {
    "kustomization.yaml": "resources: [p.yaml]\nconfigurations: [images.yaml]\nimages:\n- name: alpine\n  newTag: \"3.20\"\n- name: node\n  newName: mirror.local/node\n",
    "images.yaml": "images:\n- path: spec/steps/image\n  kind: Pipeline\n- path: spec/runner/image\n  kind: Pipeline\n",
    "p.yaml": k("""
    apiVersion: ci.example.com/v1
    kind: Pipeline
    metadata: {name: build}
    spec:
      runner:
        image: node:20
      steps:
      - {name: lint, image: alpine:3.18}
      - {name: test, image: node:20}
    ---
    apiVersion: ci.example.com/v1
    kind: Other
    metadata: {name: o}
    spec:
      runner:
        image: node:20
    """),
})
case("configurations-name-reference-to-generated-config-map", {
    "kustomization.yaml": "namePrefix: p-\nresources: [app.yaml]\nconfigurations: [refs.yaml]\nconfigMapGenerator:\n- name: app-settings\n  literals: [THEME=dark]\nsecretGenerator:\n- name: app-token\n  literals: [TOKEN=x]\n",
    "refs.yaml": "nameReference:\n- kind: ConfigMap\n  version: v1\n  fieldSpecs:\n  - path: spec/configRef/name\n    kind: App\n  - path: spec/extraConfigs\n    kind: App\n- kind: Secret\n  version: v1\n  fieldSpecs:\n  - path: spec/secrets/secretName\n    kind: App\n",
    "app.yaml": "apiVersion: apps.example.com/v1\nkind: App\nmetadata:\n  name: shop\nspec:\n  configRef: {name: app-settings}\n  extraConfigs: [app-settings, not-generated]\n  secrets:\n  - secretName: app-token\n  - secretName: external\n",
})

# openapi: a schema in YAML, merge keys at two depths, and a list of
# strings with the merge strategy (union instead of replacement).
SCHEMA_YAML = k('''
    definitions:
      v1.Router:
        type: object
        x-kubernetes-group-version-kind:
        - {group: net.example.com, kind: Router, version: v1}
        properties:
          spec:
            type: object
            properties:
              routes:
                type: array
                x-kubernetes-patch-merge-key: name
                x-kubernetes-patch-strategy: merge
                items: {$ref: "#/definitions/v1.Route"}
              hosts:
                type: array
                x-kubernetes-patch-strategy: merge
                items: {type: string}
      v1.Route:
        type: object
        properties:
          name: {type: string}
          backends:
            type: array
            x-kubernetes-patch-merge-key: service
            x-kubernetes-patch-strategy: merge
            items: {$ref: "#/definitions/v1.Backend"}
      v1.Backend:
        type: object
        properties:
          service: {type: string}
          weight: {type: integer}
    ''')
ROUTER = k('''
    apiVersion: net.example.com/v1
    kind: Router
    metadata: {name: edge}
    spec:
      hosts: [a.example, b.example]
      routes:
      - name: web
        backends:
        - {service: blue, weight: 100}
        - {service: green, weight: 0}
      - name: api
        backends:
        - {service: api, weight: 100}
    ''')
case("openapi-yaml-schema-nested-merge-keys", {
    "kustomization.yaml": k('''
    resources: [router.yaml]
    openapi:
      path: schema.yaml
    patches:
    - patch: |-
        apiVersion: net.example.com/v1
        kind: Router
        metadata: {name: edge}
        spec:
          hosts: [c.example]
          routes:
          - name: web
            backends:
            - {service: blue, weight: 20}
            - {service: green, weight: 80}
          - name: admin
            backends:
            - {service: admin, weight: 100}
    '''),
    "router.yaml": ROUTER,
    "schema.yaml": SCHEMA_YAML,
})
case("openapi-schema-delete-directive-by-merge-key", {
    "kustomization.yaml": "resources: [router.yaml]\nopenapi:\n  path: schema.yaml\npatches:\n- patch: |-\n    apiVersion: net.example.com/v1\n    kind: Router\n    metadata: {name: edge}\n    spec:\n      routes:\n      - name: api\n        $patch: delete\n      - name: web\n        backends:\n        - service: green\n          $patch: delete\n",
    "router.yaml": ROUTER,
    "schema.yaml": SCHEMA_YAML,
})

# crds: OpenAPI definitions whose properties carry
# x-kubernetes-object-ref-kind/-api-version make a custom kind's fields
# name references, so they follow prefixes and generated names' hashes.
def crd_defs(kind, spec_props, group_path="example.com/apis/v1"):
    import json
    return json.dumps({
        f"{group_path}.{kind}": {"Schema": {"properties": {
            "apiVersion": {"type": "string"}, "kind": {"type": "string"},
            "metadata": {"$ref": "k8s.io/apimachinery/pkg/apis/meta/v1.ObjectMeta"},
            "spec": {"$ref": f"{group_path}.{kind}Spec"}}},
            "Dependencies": [f"{group_path}.{kind}Spec"]},
        f"{group_path}.{kind}Spec": {"Schema": {"properties": spec_props}, "Dependencies": []},
    }, indent=2) + "\n"
DB_DEFS = crd_defs("Database", {
    "credentialsRef": {"x-kubernetes-object-ref-api-version": "v1", "x-kubernetes-object-ref-kind": "Secret", "$ref": "k8s.io/api/core/v1.LocalObjectReference"},
    "configRef": {"x-kubernetes-object-ref-api-version": "v1", "x-kubernetes-object-ref-kind": "ConfigMap", "$ref": "k8s.io/api/core/v1.LocalObjectReference"},
    "engine": {"type": "string"},
})
DATABASE = "apiVersion: db.example.com/v1\nkind: Database\nmetadata:\n  name: main\nspec:\n  engine: postgres\n  credentialsRef:\n    name: db-creds\n  configRef:\n    name: db-config\n"
case("crds-object-refs-follow-prefix-and-hash", {
    "kustomization.yaml": "crds: [defs.json]\nresources: [db.yaml]\nnamePrefix: shop-\nsecretGenerator:\n- name: db-creds\n  literals: [password=s3cret]\nconfigMapGenerator:\n- name: db-config\n  literals: [max_connections=\"100\"]\n",
    "defs.json": DB_DEFS, "db.yaml": DATABASE,
})
case("crds-of-a-base-apply-to-the-overlay", {
    "base/kustomization.yaml": "crds: [defs.json]\nresources: [db.yaml, secret.yaml]\nconfigMapGenerator:\n- name: db-config\n  literals: [A=1]\n",
    "base/defs.json": DB_DEFS, "base/db.yaml": DATABASE,
    "base/secret.yaml": "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db-creds\nstringData:\n  password: x\n",
    "overlay/kustomization.yaml": "resources: [../base]\nnameSuffix: -staging\nconfigMapGenerator:\n- name: db-config\n  behavior: merge\n  literals: [B=2]\n",
}, build="overlay")
case("crds-yaml-definitions-with-a-name-key", {
    "kustomization.yaml": "crds: [defs.yaml]\nresources: [r.yaml]\nnamePrefix: k-\n",
    "defs.yaml": k('''
    example.com/apis/v1.Gateway:
      Schema:
        properties:
          apiVersion: {type: string}
          kind: {type: string}
          metadata: {$ref: k8s.io/apimachinery/pkg/apis/meta/v1.ObjectMeta}
          spec: {$ref: example.com/apis/v1.GatewaySpec}
      Dependencies: []
    example.com/apis/v1.GatewaySpec:
      Schema:
        properties:
          tls:
            x-kubernetes-object-ref-api-version: v1
            x-kubernetes-object-ref-kind: Secret
            x-kubernetes-object-ref-name-key: secretName
          backend:
            x-kubernetes-object-ref-api-version: v1
            x-kubernetes-object-ref-kind: Service
      Dependencies: []
    '''),
    "r.yaml": SERVICE + "---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: cert\ntype: kubernetes.io/tls\ndata: {tls.crt: \"\", tls.key: \"\"}\n---\n" + k('''
    apiVersion: gw.example.com/v1
    kind: Gateway
    metadata: {name: gw}
    spec:
      tls: {secretName: cert}
      backend: {name: web}
    '''),
})
case("crds-label-selector-annotation-and-identity", {
    "kustomization.yaml": "crds: [defs.json]\nresources: [r.yaml]\nnamePrefix: t-\ncommonLabels: {team: a}\ncommonAnnotations: {owner: me}\n",
    "defs.json": crd_defs("Pool", {
        "selector": {"x-kubernetes-label-selector": ""},
        "podAnnotations": {"x-kubernetes-annotation": ""},
        "alias": {"x-kubernetes-identity": ""},
    }),
    "r.yaml": "apiVersion: pool.example.com/v1\nkind: Pool\nmetadata:\n  name: workers\nspec:\n  selector: {role: worker}\n  podAnnotations: {a: b}\n  alias: workers\n",
})
case("error-crds-missing-file", {
    "kustomization.yaml": "crds: [missing-defs.json]\nresources: [c.yaml]\n", "c.yaml": CM,
}, error="missing-defs.json")

# buildMetadata: transformerAnnotations; all three options at once, with
# origins for objects from a component and from a generator configuration.
case("build-metadata-transformer-annotations", {
    "base/kustomization.yaml": "resources: [c.yaml]\nnamePrefix: b-\n", "base/c.yaml": CM,
    "overlay/kustomization.yaml": "resources: [../base, d.yaml]\nbuildMetadata: [transformerAnnotations]\ncommonLabels: {env: prod}\npatches:\n- target: {kind: Deployment}\n  patch: |-\n    - op: replace\n      path: /spec/replicas\n      value: 2\n",
    "overlay/d.yaml": DEPLOY,
}, build="overlay")
case("build-metadata-all-options-with-component-and-generator-config", {
    "comp/kustomization.yaml": COMP + "resources: [extra.yaml]\n",
    "comp/extra.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: extra\n",
    "kustomization.yaml": "resources: [c.yaml]\ncomponents: [comp]\ngenerators: [g.yaml]\nbuildMetadata: [originAnnotations, managedByLabel, transformerAnnotations]\nnamespace: apps\n",
    "c.yaml": CM,
    "g.yaml": "apiVersion: builtin\nkind: ConfigMapGenerator\nmetadata:\n  name: generated\nliterals: [A=1]\n",
})

# RBAC: a suffix on cluster roles, subjects of other kinds left alone;
# an overlay's JSON patch renaming a Role and a ServiceAccount, followed by
# the base's binding.
case("rbac-cluster-role-suffix-and-other-subjects", {
    "kustomization.yaml": "nameSuffix: -v2\nresources: [r.yaml]\n",
    "r.yaml": k('''
    apiVersion: rbac.authorization.k8s.io/v1
    kind: ClusterRole
    metadata: {name: metrics-reader}
    rules: [{nonResourceURLs: [/metrics], verbs: [get]}]
    ---
    apiVersion: rbac.authorization.k8s.io/v1
    kind: ClusterRole
    metadata: {name: aggregate}
    aggregationRule:
      clusterRoleSelectors: [{matchLabels: {rbac.example.com/aggregate: "true"}}]
    ---
    apiVersion: rbac.authorization.k8s.io/v1
    kind: ClusterRoleBinding
    metadata: {name: metrics}
    roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: metrics-reader}
    subjects:
    - {kind: Group, name: system:monitoring, apiGroup: rbac.authorization.k8s.io}
    - {kind: User, name: metrics-reader, apiGroup: rbac.authorization.k8s.io}
    - {kind: ServiceAccount, name: prometheus, namespace: monitoring}
    ---
    apiVersion: rbac.authorization.k8s.io/v1
    kind: RoleBinding
    metadata: {name: local, namespace: apps}
    roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: aggregate}
    subjects:
    - {kind: Group, name: devs, apiGroup: rbac.authorization.k8s.io}
    '''),
})
case("rbac-role-renamed-by-overlay-json-patch", {
    "base/kustomization.yaml": "resources: [r.yaml]\n",
    "base/r.yaml": k('''
    apiVersion: v1
    kind: ServiceAccount
    metadata: {name: worker}
    ---
    apiVersion: rbac.authorization.k8s.io/v1
    kind: Role
    metadata: {name: jobs}
    rules: [{apiGroups: [batch], resources: [jobs], verbs: [create]}]
    ---
    apiVersion: rbac.authorization.k8s.io/v1
    kind: RoleBinding
    metadata: {name: worker-jobs}
    roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: jobs}
    subjects:
    - {kind: ServiceAccount, name: worker}
    '''),
    "overlay/kustomization.yaml": k('''
    resources: [../base]
    patches:
    - target: {kind: Role, name: jobs}
      patch: |-
        - op: replace
          path: /metadata/name
          value: batch-jobs
    - target: {kind: ServiceAccount}
      patch: |-
        - op: replace
          path: /metadata/name
          value: batch-worker
    '''),
}, build="overlay")
case("ingress-default-backend-and-generated-tls-secret", {
    "kustomization.yaml": "namePrefix: media-\nresources: [r.yaml]\nsecretGenerator:\n- name: jellyfin-tls\n  type: kubernetes.io/tls\n  files: [tls.crt, tls.key]\n",
    "tls.crt": "CERT\n", "tls.key": "KEY\n",
    "r.yaml": k('''
    apiVersion: v1
    kind: Service
    metadata: {name: jellyfin}
    spec:
      ports: [{port: 8096}]
    ---
    apiVersion: v1
    kind: Service
    metadata: {name: fallback}
    spec:
      ports: [{port: 80}]
    ---
    apiVersion: networking.k8s.io/v1
    kind: Ingress
    metadata: {name: jellyfin}
    spec:
      ingressClassName: nginx
      defaultBackend:
        service: {name: fallback, port: {number: 80}}
      tls:
      - hosts: [jellyfin.home.lan]
        secretName: jellyfin-tls
      rules:
      - host: jellyfin.home.lan
        http:
          paths:
          - path: /
            pathType: Prefix
            backend:
              service: {name: jellyfin, port: {number: 8096}}
          - path: /static
            pathType: Prefix
            backend:
              resource: {apiGroup: storage.example.com, kind: Bucket, name: jellyfin}
    '''),
})
case("webhook-service-follows-prefix-and-namespace", {
    "kustomization.yaml": "namespace: policy\nnamePrefix: kyverno-\nresources: [r.yaml]\n",
    "r.yaml": k('''
    apiVersion: v1
    kind: Service
    metadata: {name: svc}
    spec:
      ports: [{port: 443, targetPort: 9443}]
    ---
    apiVersion: admissionregistration.k8s.io/v1
    kind: MutatingWebhookConfiguration
    metadata: {name: mutate}
    webhooks:
    - name: mutate.example.com
      admissionReviewVersions: [v1]
      sideEffects: None
      clientConfig:
        service: {name: svc, namespace: default, path: /mutate}
    ---
    apiVersion: admissionregistration.k8s.io/v1
    kind: ValidatingWebhookConfiguration
    metadata: {name: validate}
    webhooks:
    - name: validate.example.com
      admissionReviewVersions: [v1]
      sideEffects: None
      clientConfig:
        service: {name: svc, path: /validate}
    - name: url.example.com
      admissionReviewVersions: [v1]
      sideEffects: None
      clientConfig:
        url: https://external.example.com/validate
    '''),
})
case("namespace-sets-crd-conversion-webhook-service", {
    "kustomization.yaml": "namespace: operators\nnamePrefix: op-\nresources: [r.yaml]\n",
    "r.yaml": k('''
    apiVersion: apiextensions.k8s.io/v1
    kind: CustomResourceDefinition
    metadata: {name: widgets.example.com}
    spec:
      group: example.com
      names: {kind: Widget, plural: widgets}
      scope: Namespaced
      conversion:
        strategy: Webhook
        webhook:
          conversionReviewVersions: [v1]
          clientConfig:
            service: {name: webhook, namespace: old, path: /convert}
    ---
    apiVersion: v1
    kind: Service
    metadata: {name: webhook}
    spec:
      ports: [{port: 443}]
    '''),
})
case("namespace-skips-more-cluster-scoped-kinds", {
    "kustomization.yaml": "namespace: apps\nresources: [r.yaml]\n",
    "r.yaml": k('''
    apiVersion: v1
    kind: PersistentVolume
    metadata: {name: nfs-media}
    spec:
      capacity: {storage: 1Ti}
      accessModes: [ReadWriteMany]
      nfs: {server: nas.lan, path: /media}
    ---
    apiVersion: networking.k8s.io/v1
    kind: IngressClass
    metadata: {name: traefik}
    spec: {controller: traefik.io/ingress-controller}
    ---
    apiVersion: scheduling.k8s.io/v1
    kind: PriorityClass
    metadata: {name: critical}
    value: 100000
    ---
    apiVersion: storage.k8s.io/v1
    kind: CSIDriver
    metadata: {name: nfs.csi.k8s.io}
    ---
    apiVersion: cert-manager.io/v1
    kind: ClusterIssuer
    metadata: {name: letsencrypt}
    ---
    apiVersion: node.k8s.io/v1
    kind: RuntimeClass
    metadata: {name: gvisor}
    handler: runsc
    ---
    apiVersion: v1
    kind: PersistentVolumeClaim
    metadata: {name: media}
    spec:
      volumeName: nfs-media
      accessModes: [ReadWriteMany]
      resources: {requests: {storage: 1Ti}}
    '''),
})

# Components: a component as the build root with a nested component; a
# component deleting a base object; replacing a base's generator; a
# component's namespace over the overlay's own objects.
case("component-root-with-nested-component", {
    "kustomization.yaml": COMP + "resources: [c.yaml]\ncomponents: [inner]\ncommonLabels: {root: \"yes\"}\n",
    "c.yaml": CM,
    "inner/kustomization.yaml": COMP + "configMapGenerator:\n- name: from-inner\n  literals: [X=1]\npatches:\n- target: {kind: ConfigMap, name: plain}\n  patch: |-\n    - op: add\n      path: /data/inner\n      value: \"yes\"\n",
})
case("components-delete-a-base-object", {
    "base/kustomization.yaml": "resources: [d.yaml, s.yaml, c.yaml]\n", "base/d.yaml": DEPLOY, "base/s.yaml": SERVICE, "base/c.yaml": CM,
    "no-service/kustomization.yaml": COMP + "patches:\n- patch: |-\n    $patch: delete\n    apiVersion: v1\n    kind: Service\n    metadata:\n      name: web\n- path: drop-cm.yaml\n",
    "no-service/drop-cm.yaml": "$patch: delete\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: plain\n",
    "overlay/kustomization.yaml": "resources: [../base]\ncomponents: [../no-service]\nnamePrefix: x-\n",
}, build="overlay")
case("components-replace-a-base-generator", {
    "base/kustomization.yaml": "resources: [d.yaml]\nconfigMapGenerator:\n- name: settings\n  literals: [A=1, B=2]\n", "base/d.yaml": APPDEP,
    "comp/kustomization.yaml": COMP + "configMapGenerator:\n- name: settings\n  behavior: replace\n  literals: [ONLY=this]\n  options:\n    labels: {from: component}\n",
    "overlay/kustomization.yaml": "resources: [../base]\ncomponents: [../comp]\n",
}, build="overlay")
case("components-namespace-over-overlay-objects", {
    "base/kustomization.yaml": "resources: [d.yaml]\n", "base/d.yaml": DEPLOY,
    "comp/kustomization.yaml": COMP + "namespace: from-comp\ncommonAnnotations: {comp: \"yes\"}\n",
    "overlay/kustomization.yaml": "resources: [../base, s.yaml]\ncomponents: [../comp]\nconfigMapGenerator:\n- name: own\n  literals: [A=1]\n",
    "overlay/s.yaml": SERVICE,
}, build="overlay")
case("error-component-root-with-kustomization-api-version", {
    "kustomization.yaml": "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Component\nresources: [c.yaml]\n", "c.yaml": CM,
}, error="apiVersion")

# Patches: label and annotation selectors together; JSON 6902 moves and
# copies of list items with a passing test; an overlay's legacy
# patchesStrategicMerge file deleting one object and changing another.
target("target-label-and-annotation-selectors-combined", "kind: ConfigMap\nlabelSelector: tier=front\nannotationSelector: team=a\n")
j6902("json6902-move-and-copy-list-items", k("""
    - op: test
      path: /spec/template/spec/containers/1/name
      value: side
    - op: move
      from: /spec/template/spec/containers/1
      path: /spec/template/spec/containers/0
    - op: copy
      from: /spec/template/spec/containers/1/env
      path: /spec/template/spec/initContainers/0/env
    - op: copy
      from: /spec/template/spec/volumes/0
      path: /spec/template/spec/volumes/-
    - op: replace
      path: /spec/template/spec/volumes/2/name
      value: scratch
    """))
case("patches-strategic-merge-legacy-delete-and-change", {
    "base/kustomization.yaml": "resources: [d.yaml, s.yaml, c.yaml]\n", "base/d.yaml": DEPLOY, "base/s.yaml": SERVICE, "base/c.yaml": CM,
    "overlay/kustomization.yaml": "resources: [../base]\npatchesStrategicMerge: [p.yaml]\n",
    "overlay/p.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: plain\n$patch: delete\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  type: LoadBalancer\n  ports:\n  - port: 80\n    $patch: delete\n  - port: 8080\n",
}, build="overlay")

# Sorting: only orderFirst given; fifo with generators and components;
# a base's sortOptions are not read.
case("sort-legacy-only-order-first", {
    "kustomization.yaml": "sortOptions:\n  order: legacy\n  legacySortOptions:\n    orderFirst: [Service, Deployment]\nresources: [r.yaml]\n", "r.yaml": ALLKINDS,
})
case("sort-fifo-with-generators-and-components", {
    "comp/kustomization.yaml": COMP + "resources: [ns.yaml]\nconfigMapGenerator:\n- name: comp-gen\n  literals: [A=1]\n",
    "comp/ns.yaml": "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: late\n",
    "kustomization.yaml": "sortOptions: {order: fifo}\nresources: [s.yaml, d.yaml]\ncomponents: [comp]\nsecretGenerator:\n- name: own-secret\n  literals: [B=2]\nconfigMapGenerator:\n- name: own-gen\n  literals: [C=3]\n",
    "s.yaml": SERVICE, "d.yaml": DEPLOY,
})
case("sort-options-of-a-base-are-not-read", {
    "base/kustomization.yaml": "sortOptions: {order: fifo}\nresources: [r.yaml]\n", "base/r.yaml": ALLKINDS,
    "overlay/kustomization.yaml": "resources: [../base]\n",
}, build="overlay")

# Labels: fields with includeSelectors; includeSelectors with
# includeTemplates explicitly false.
case("labels-fields-and-include-selectors", {
    "kustomization.yaml": "resources: [r.yaml]\nlabels:\n- pairs: {app.kubernetes.io/part-of: media}\n  includeSelectors: true\n  fields:\n  - path: spec/podSelector/matchLabels\n    kind: Policy\n    create: true\n",
    "r.yaml": DEPLOY + "---\napiVersion: policy.example.com/v1\nkind: Policy\nmetadata:\n  name: p\nspec:\n  action: allow\n",
})
case("labels-include-selectors-with-templates-false", {
    "kustomization.yaml": "resources: [r.yaml]\nlabels:\n- pairs: {sel: both}\n  includeSelectors: true\n  includeTemplates: false\n- pairs: {tmpl: only}\n  includeSelectors: false\n  includeTemplates: true\n",
    "r.yaml": WORKLOADS,
})

# Images: digests replacing tags and tags replacing digests; an overlay
# chain where the base renamed the image.
case("images-digest-and-tag-interplay", {
    "kustomization.yaml": k("""
    resources: [p.yaml]
    images:
    - name: app
      digest: sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc
    - name: tool
      newTag: "2.0"
    - name: registry.lan:5000/media/sonarr
      newName: ghcr.io/example/sonarr
      newTag: "4.0"
      digest: sha256:dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd
    """),
    "p.yaml": k("""
    apiVersion: v1
    kind: Pod
    metadata: {name: p}
    spec:
      containers:
      - {name: a, image: "app:1.0"}
      - {name: b, image: "tool@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}
      - {name: c, image: "registry.lan:5000/media/sonarr:3.0"}
      - {name: d, image: "app"}
    """),
})
case("images-overlay-chain-after-rename", {
    "base/kustomization.yaml": "resources: [d.yaml]\nimages:\n- name: nginx\n  newName: mirror.lan/library/nginx\n", "base/d.yaml": DEPLOY,
    "overlay/kustomization.yaml": "resources: [../base]\nimages:\n- name: nginx\n  newTag: \"ignored\"\n- name: mirror.lan/library/nginx\n  newTag: \"1.27-alpine\"\n",
}, build="overlay")

# Replicas: several workload kinds, names as they were before a prefix;
# a name that matches nothing is refused.
case("replicas-several-kinds-by-original-name", {
    "kustomization.yaml": "namePrefix: p-\nresources: [r.yaml]\nreplicas:\n- name: web\n  count: 2\n- name: rs\n  count: 4\n- name: rc\n  count: 0\n",
    "r.yaml": DEPLOY + "---\n" + k("""
    apiVersion: apps/v1
    kind: ReplicaSet
    metadata: {name: rs}
    spec:
      selector: {matchLabels: {app: rs}}
      template:
        metadata: {labels: {app: rs}}
        spec:
          containers: [{name: c, image: x}]
    ---
    apiVersion: v1
    kind: ReplicationController
    metadata: {name: rc}
    spec:
      replicas: 1
      template:
        metadata: {labels: {app: rc}}
        spec:
          containers: [{name: c, image: x}]
    ---
    apiVersion: example.com/v1
    kind: Scaler
    metadata: {name: web}
    spec:
      replicas: 1
    """),
})
case("error-replicas-name-matches-nothing", {
    "kustomization.yaml": "resources: [d.yaml]\nreplicas:\n- name: nothere\n  count: 2\n", "d.yaml": DEPLOY,
}, error="nothere")

# YAML details: anchors and aliases (with a merge key), folded and literal
# block scalars in a patch, long base64 data, YAML 1.1 octal in a patch.
case("yaml-anchors-and-aliases", {
    "kustomization.yaml": "resources: [r.yaml]\ncommonLabels: {app: media}\n",
    "r.yaml": k("""
    apiVersion: v1
    kind: ConfigMap
    metadata:
      name: anchors
      annotations: &common
        owner: media-team
        tier: backend
    data:
      first: &val shared-value
      second: *val
    ---
    apiVersion: apps/v1
    kind: Deployment
    metadata:
      name: sonarr
    spec:
      selector:
        matchLabels: {app: sonarr}
      template:
        metadata:
          labels: {app: sonarr}
        spec:
          containers:
          - name: sonarr
            image: linuxserver/sonarr
            env: &env
            - {name: TZ, value: Europe/Paris}
            - {name: PUID, value: "1000"}
            resources: &res
              limits: {memory: 512Mi}
          - name: exporter
            image: exportarr
            env: *env
            resources:
              <<: *res
              requests: {cpu: 10m}
    """),
})
case("block-scalars-in-a-patch", {
    "kustomization.yaml": "resources: [c.yaml]\npatches:\n- path: p.yaml\n",
    "c.yaml": CM,
    "p.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: plain\n  annotations:\n    description: >-\n      A long description\n      folded onto one line.\ndata:\n  nginx.conf: |\n    server {\n      listen 80;\n    }\n  script.sh: |-\n    #!/bin/sh\n    echo \"hi\"\n  keep: |+\n    trailing\n\n  folded: >\n    a\n    b\n\n    c\n",
})
case("secret-long-base64-data-and-string-data", {
    "kustomization.yaml": "resources: [s.yaml]\nnamePrefix: x-\n",
    "s.yaml": "apiVersion: v1\nkind: Secret\nmetadata:\n  name: big\ntype: Opaque\ndata:\n  ca.crt: " + ("TUlJQkl" * 60) + "==\n  folded: >-\n    QUJD\n    REVG\nstringData:\n  config.json: '{\"a\": 1}'\n  multi: |\n    line one\n    line two\n",
})
case("yaml11-octal-in-a-patch", {
    "kustomization.yaml": "resources: [d.yaml]\nconfigMapGenerator:\n- name: modes\n  literals: [MODE=0755, FLAG=yes, N=010]\npatches:\n- patch: |-\n    apiVersion: apps/v1\n    kind: Deployment\n    metadata:\n      name: web\n    spec:\n      template:\n        spec:\n          volumes:\n          - name: scripts\n            configMap:\n              name: modes\n              defaultMode: 0755\n          - name: keys\n            secret:\n              secretName: keys\n              defaultMode: 0o600\n",
    "d.yaml": DEPLOY,
})

# More errors: two kustomization files in a base; a transformer patch file
# that is not there.
case("error-several-kustomization-files-in-a-base", {
    "base/kustomization.yaml": "resources: [c.yaml]\n", "base/Kustomization": "resources: [c.yaml]\n", "base/c.yaml": CM,
    "overlay/kustomization.yaml": "resources: [../base]\n",
}, build="overlay", error="multiple kustomization files")
case("error-builtin-patch-transformer-missing-file", {
    "kustomization.yaml": "resources: [d.yaml]\ntransformers: [t.yaml]\n", "d.yaml": DEPLOY,
    "t.yaml": "apiVersion: builtin\nkind: PatchTransformer\nmetadata:\n  name: t\npath: absent-patch.yaml\ntarget: {kind: Deployment}\n",
}, error="absent-patch.yaml")


def main():
    if os.path.isdir(CASES):
        shutil.rmtree(CASES)
    failures = 0
    for name, (files, build, error) in sorted(cases.items()):
        d = os.path.join(CASES, name)
        for path, text in files.items():
            p = os.path.join(d, path)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            with open(p, "wb" if isinstance(text, bytes) else "w") as f:
                f.write(text)
        if build:
            with open(os.path.join(d, "build"), "w") as f:
                f.write(build + "\n")
        target = os.path.join(d, build or ".")
        r = subprocess.run(["kubectl", "kustomize", target], capture_output=True, text=True)
        if error:
            if r.returncode == 0:
                print(f"{name}: kustomize accepted an error case", file=sys.stderr)
                failures += 1
            with open(os.path.join(d, "expected.err"), "w") as f:
                # kubectl's log prefix (time, pid) would change every run.
                message = r.stderr.replace(CASES + "/", "")
                message = re.sub(r'^E\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] ', "", message, flags=re.M)
                # Go pointers in messages change every run.
                message = re.sub(r'0x[0-9a-f]{6,}', "0x…", message)
                f.write(message)
            with open(os.path.join(d, "error.txt"), "w") as f:
                f.write(error + "\n")
        else:
            if r.returncode != 0:
                print(f"{name}: kustomize failed: {r.stderr}", file=sys.stderr)
                failures += 1
            with open(os.path.join(d, "expected.yaml"), "w") as f:
                f.write(r.stdout)
    print(f"{len(cases)} cases written under {CASES}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

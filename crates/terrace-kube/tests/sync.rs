//! Plan and apply against a scripted fake of the API: request shapes, the
//! order of requests, waits, prune and drift.

mod fake;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use terrace_core::plan::Action;
use terrace_core::state::InventoryItem;
use terrace_kube::sync::{self, Conflicts, Desired, Options, Owner};

use fake::{Fake, Owned};

fn owner() -> Owner {
    Owner {
        project: "homelab".into(),
        environment: "home".into(),
        unit: "web".into(),
    }
}

fn options() -> Options {
    Options {
        conflicts: Conflicts::Yield,
        wait: true,
        timeout: Duration::from_secs(5),
        poll: Duration::from_millis(5),
        ..Options::default()
    }
}

fn desired(value: Value) -> Desired {
    let av = value["apiVersion"].as_str().expect("apiVersion");
    let kind = value["kind"].as_str().expect("kind");
    let name = value["metadata"]["name"].as_str().expect("name");
    let address = match value["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{av} {kind} {ns}/{name}"),
        None => format!("{av} {kind} {name}"),
    };
    Desired {
        address,
        source: "apps/web/objects.yaml".into(),
        value,
        sensitive: false,
    }
}

fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

fn config_map(name: &str, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "apps"}, "data": data})
}

fn deployment(replicas: i64) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "apps"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "web", "image": "web:1.0"}]}}}})
}

fn crd() -> Value {
    json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
                 "names": {"kind": "Widget", "plural": "widgets"},
                 "versions": [{"name": "v1", "served": true, "storage": true}]}})
}

fn inventory(items: &[InventoryItem]) -> Vec<String> {
    items.iter().map(|i| i.address()).collect()
}

/// Plans `objects` for the unit `owner()` names.
async fn plan_on(
    fake: &Fake,
    objects: Vec<Value>,
    prior: &[InventoryItem],
    options: Options,
) -> Result<sync::Planned, terrace_kube::KubeError> {
    let desired = objects.into_iter().map(desired).collect();
    sync::plan(Arc::new(fake.cluster()), owner(), desired, prior, options).await
}

/// Plans and applies; returns the new inventory.
async fn converge(fake: &Fake, objects: Vec<Value>, prior: &[InventoryItem]) -> Vec<InventoryItem> {
    let planned = plan_on(fake, objects, prior, options())
        .await
        .expect("plan");
    sync::apply(&planned.plan).await.expect("apply")
}

/// The index of the first call matching `f`.
fn first(calls: &[fake::Call], f: impl Fn(&fake::Call) -> bool) -> usize {
    calls
        .iter()
        .position(f)
        .unwrap_or_else(|| panic!("no such call in {calls:#?}"))
}

fn writes_to(calls: &[fake::Call], path: &str) -> usize {
    first(calls, |c| c.is_write() && c.path == path)
}

#[tokio::test]
async fn first_apply_orders_crds_namespaces_waves_and_hooks() {
    let fake = Fake::new();
    let widget = json!({"apiVersion": "example.com/v1", "kind": "Widget",
        "metadata": {"name": "w", "namespace": "apps"}, "spec": {"size": 3}});
    let mut late = config_map("late", json!({"k": "v"}));
    late["metadata"]["annotations"] = json!({"argocd.argoproj.io/sync-wave": "1"});
    let pre = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "migrate", "namespace": "apps",
        "annotations": {"argocd.argoproj.io/hook": "PreSync", "argocd.argoproj.io/hook-delete-policy": "HookSucceeded"}},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "m", "image": "m"}]}}}});
    let mut post = config_map("done", json!({"k": "v"}));
    post["metadata"]["annotations"] = json!({"argocd.argoproj.io/hook": "PostSync"});
    // Given in the worst order on purpose.
    let objects = vec![
        post,
        late,
        widget,
        deployment(2),
        config_map("cfg", json!({"a": "1"})),
        pre,
        namespace("apps"),
        crd(),
    ];
    let planned = plan_on(&fake, objects, &[], options()).await.expect("plan");
    // Hooks are not changes; everything else is created.
    assert_eq!(planned.changes.len(), 6, "{:#?}", planned.changes);
    assert!(planned.changes.iter().all(|c| c.action == Action::Create));
    assert!(
        fake.calls().iter().all(|c| !c.is_write()),
        "a plan never writes"
    );
    let created = planned
        .changes
        .iter()
        .find(|c| c.address.contains("Deployment"))
        .and_then(|c| c.diff.clone())
        .expect("diff");
    assert!(created.contains("+ spec.replicas: 2"), "{created}");

    fake.clear_calls();
    let inv = sync::apply(&planned.plan).await.expect("apply");
    let calls = fake.calls();

    // Every write is a server-side apply under the field manager `terrace`.
    for c in calls.iter().filter(|c| c.method == "PATCH") {
        assert_eq!(c.content_type, "application/apply-patch+yaml");
        assert!(c.query.contains("fieldManager=terrace"), "{}", c.query);
        assert!(!c.query.contains("force"), "{}", c.query);
        assert_eq!(c.body["metadata"]["annotations"]["terrace.dev/unit"], "web");
        assert_eq!(
            c.body["metadata"]["annotations"]["terrace.dev/environment"],
            "home"
        );
        assert_eq!(
            c.body["metadata"]["annotations"]["terrace.dev/project"],
            "homelab"
        );
        assert_eq!(
            c.body["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "terrace"
        );
    }

    let crd_path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.example.com";
    let job = "/apis/batch/v1/namespaces/apps/jobs/migrate";
    let ns = "/api/v1/namespaces/apps";
    let dep = "/apis/apps/v1/namespaces/apps/deployments/web";
    let cfg = "/api/v1/namespaces/apps/configmaps/cfg";
    let widget = "/apis/example.com/v1/namespaces/apps/widgets/w";
    let late = "/api/v1/namespaces/apps/configmaps/late";
    let done = "/api/v1/namespaces/apps/configmaps/done";

    // PreSync hook first, waited for, then deleted (HookSucceeded).
    let job_write = writes_to(&calls, job);
    let job_done = first(&calls, |c| c.method == "GET" && c.path == job);
    let job_deleted = first(&calls, |c| c.method == "DELETE" && c.path == job);
    assert!(job_write < job_done && job_done < job_deleted);
    // Then the CRD, waited for until Established (it takes two reads),
    // discovery asked again, and only then the custom resource.
    let crd_write = writes_to(&calls, crd_path);
    assert!(job_deleted < crd_write);
    let crd_reads: Vec<usize> = calls
        .iter()
        .enumerate()
        .filter(|(_, c)| c.method == "GET" && c.path == crd_path)
        .map(|(i, _)| i)
        .collect();
    assert!(crd_reads.len() >= 2, "waited for Established");
    let rediscover = first(&calls, |c| c.path == "/apis/example.com/v1");
    assert!(crd_write < crd_reads[1] && crd_reads[1] < rediscover);
    assert!(rediscover < writes_to(&calls, widget));
    // Namespace, then Helm's order (ConfigMap before Deployment), custom
    // resources last.
    assert!(crd_write < writes_to(&calls, ns));
    assert!(writes_to(&calls, ns) < writes_to(&calls, cfg));
    assert!(writes_to(&calls, cfg) < writes_to(&calls, dep));
    assert!(writes_to(&calls, dep) < writes_to(&calls, widget));
    // Wave 1 after wave 0 is healthy (the Deployment read back).
    let dep_health = first(&calls, |c| c.method == "GET" && c.path == dep);
    assert!(dep_health < writes_to(&calls, late));
    // PostSync last.
    assert!(writes_to(&calls, late) < writes_to(&calls, done));
    let last_write = calls.iter().rposition(|c| c.is_write()).expect("writes");
    assert_eq!(calls[last_write].path, done);
    assert_eq!(calls[last_write].method, "PATCH");

    // The inventory holds the unit's objects, not its hooks.
    let mut names = inventory(&inv);
    names.sort();
    assert_eq!(names.len(), 6);
    assert!(
        !names
            .iter()
            .any(|n| n.contains("migrate") || n.contains(" apps/done"))
    );
    assert!(fake.object(job).is_none(), "HookSucceeded deleted the Job");
}

#[tokio::test]
async fn unchanged_objects_plan_quiet_and_apply_sends_nothing() {
    let fake = Fake::new();
    let objects = || {
        vec![
            namespace("apps"),
            config_map("cfg", json!({"a": "1"})),
            deployment(2),
        ]
    };
    let inv = converge(&fake, objects(), &[]).await;
    fake.clear_calls();

    let planned = plan_on(&fake, objects(), &inv, options())
        .await
        .expect("plan");
    assert!(planned.changes.is_empty(), "{:#?}", planned.changes);
    assert_eq!(planned.unchanged, 3);
    // The objects are as last applied and still so in the cluster: no
    // dry-run was needed, and nothing was written.
    let calls = fake.calls();
    assert!(
        calls.iter().all(|c| !c.query.contains("dryRun")),
        "{calls:#?}"
    );
    assert!(calls.iter().all(|c| !c.is_write()));
    fake.clear_calls();
    let again = sync::apply(&planned.plan).await.expect("apply");
    assert!(
        fake.calls().iter().all(|c| !c.is_write()),
        "{:#?}",
        fake.calls()
    );
    assert_eq!(inventory(&again), inventory(&inv));

    // Without a record of what was applied (state lost), every object is
    // dry-run: defaulted fields (the fake adds `strategy` and
    // `revisionHistoryLimit`) still do not show as drift.
    fake.clear_calls();
    let planned = plan_on(&fake, objects(), &[], options())
        .await
        .expect("plan");
    assert!(planned.changes.is_empty(), "{:#?}", planned.changes);
    let dry_runs = fake
        .calls()
        .iter()
        .filter(|c| c.query.contains("dryRun=All"))
        .count();
    assert_eq!(dry_runs, 3);
    assert!(fake.calls().iter().all(|c| !c.is_write()));
}

#[tokio::test]
async fn one_changed_field_updates_exactly_one_object() {
    let fake = Fake::new();
    let inv = converge(
        &fake,
        vec![
            namespace("apps"),
            config_map("cfg", json!({"a": "1"})),
            deployment(2),
        ],
        &[],
    )
    .await;
    fake.clear_calls();
    let planned = plan_on(
        &fake,
        vec![
            namespace("apps"),
            config_map("cfg", json!({"a": "1"})),
            deployment(3),
        ],
        &inv,
        options(),
    )
    .await
    .expect("plan");
    assert_eq!(planned.changes.len(), 1);
    assert_eq!(planned.changes[0].action, Action::Update);
    assert_eq!(
        planned.changes[0].diff.as_deref(),
        Some("~ spec.replicas: 2 → 3\n")
    );
    sync::apply(&planned.plan).await.expect("apply");
    let writes: Vec<String> = fake
        .calls()
        .iter()
        .filter(|c| c.is_write())
        .map(|c| c.path.clone())
        .collect();
    assert_eq!(
        writes,
        vec!["/apis/apps/v1/namespaces/apps/deployments/web"]
    );
}

#[tokio::test]
async fn prune_deletes_exactly_the_removed_objects_in_reverse_order() {
    let fake = Fake::new();
    let mut kept = config_map("kept", json!({"x": "1"}));
    kept["metadata"]["annotations"] = json!({"terrace.dev/prune": "disabled"});
    let inv = converge(
        &fake,
        vec![
            namespace("apps"),
            config_map("cfg", json!({"a": "1"})),
            deployment(2),
            kept,
            config_map("stays", json!({})),
        ],
        &[],
    )
    .await;
    fake.clear_calls();
    let planned = plan_on(
        &fake,
        vec![namespace("apps"), config_map("stays", json!({}))],
        &inv,
        options(),
    )
    .await
    .expect("plan");
    let deletes: Vec<(&str, Action)> = planned
        .changes
        .iter()
        .map(|c| (c.address.as_str(), c.action))
        .collect();
    assert_eq!(
        deletes,
        vec![
            ("apps/v1 Deployment apps/web", Action::Delete),
            ("v1 ConfigMap apps/cfg", Action::Delete),
        ]
    );
    assert!(
        planned
            .notes
            .iter()
            .any(|n| n.contains("kept") && n.contains("disable pruning")),
        "{:?}",
        planned.notes
    );
    let inv = sync::apply(&planned.plan).await.expect("apply");
    let deleted: Vec<String> = fake
        .calls()
        .iter()
        .filter(|c| c.method == "DELETE")
        .map(|c| c.path.clone())
        .collect();
    assert_eq!(
        deleted,
        vec![
            "/apis/apps/v1/namespaces/apps/deployments/web",
            "/api/v1/namespaces/apps/configmaps/cfg"
        ]
    );
    assert_eq!(
        fake.calls()
            .iter()
            .find(|c| c.method == "DELETE")
            .map(|c| c.body["propagationPolicy"].clone()),
        Some(json!("Background"))
    );
    assert!(
        fake.object("/api/v1/namespaces/apps/configmaps/kept")
            .is_some()
    );
    assert_eq!(
        inventory(&inv),
        vec!["v1 Namespace apps", "v1 ConfigMap apps/stays"]
    );
}

#[tokio::test]
async fn drift_shows_in_plan_and_apply_heals_it() {
    let fake = Fake::new();
    let objects = || vec![namespace("apps"), config_map("cfg", json!({"a": "1"}))];
    let inv = converge(&fake, objects(), &[]).await;
    let path = "/api/v1/namespaces/apps/configmaps/cfg";
    fake.edit(path, |o| o["data"]["a"] = json!("changed by hand"));
    let planned = plan_on(&fake, objects(), &inv, options())
        .await
        .expect("plan");
    assert_eq!(planned.changes.len(), 1);
    assert_eq!(
        planned.changes[0].diff.as_deref(),
        Some("~ data.a: changed by hand → 1\n")
    );
    sync::apply(&planned.plan).await.expect("apply");
    assert_eq!(fake.object(path).expect("cfg")["data"]["a"], "1");
}

#[tokio::test]
async fn fields_of_other_managers_follow_the_conflict_policy() {
    let fake = Fake::new();
    let inv = converge(&fake, vec![namespace("apps"), deployment(2)], &[]).await;
    let path = "/apis/apps/v1/namespaces/apps/deployments/web";
    // An autoscaler took over `spec.replicas` and scaled to 5.
    fake.edit(path, |o| o["spec"]["replicas"] = json!(5));
    fake.0.lock().expect("lock").owned.push(Owned {
        path: path.into(),
        pointer: "/spec/replicas".into(),
        field: ".spec.replicas".into(),
        manager: "kube-controller-manager".into(),
    });
    let plan_with = |conflicts: Conflicts| {
        let fake = fake.clone();
        let inv = inv.clone();
        async move {
            plan_on(
                &fake,
                vec![namespace("apps"), deployment(2)],
                &inv,
                Options {
                    conflicts,
                    ..options()
                },
            )
            .await
        }
    };
    // yield: no perpetual drift; the plan says what was left alone.
    let planned = plan_with(Conflicts::Yield).await.expect("plan");
    assert!(planned.changes.is_empty(), "{:#?}", planned.changes);
    assert!(
        planned.notes.iter().any(|n| n.contains(".spec.replicas")),
        "{:?}",
        planned.notes
    );
    // error: the plan fails, naming the field and its manager.
    let err = plan_with(Conflicts::Error).await.expect_err("conflict");
    let text = err.to_string();
    assert!(
        text.contains(".spec.replicas") && text.contains("kube-controller-manager"),
        "{text}"
    );
    assert!(text.contains("apps/web/objects.yaml"), "{text}");
    // force: the update is planned and applied with force=true.
    let planned = plan_with(Conflicts::Force).await.expect("plan");
    assert_eq!(planned.changes.len(), 1);
    assert_eq!(
        planned.changes[0].diff.as_deref(),
        Some("~ spec.replicas: 5 → 2\n")
    );
    fake.clear_calls();
    sync::apply(&planned.plan).await.expect("apply");
    let write = fake
        .calls()
        .into_iter()
        .find(|c| c.is_write())
        .expect("a write");
    assert!(write.query.contains("force=true"));
    assert_eq!(
        fake.object(path).expect("deployment")["spec"]["replicas"],
        2
    );
}

#[tokio::test]
async fn fields_changed_by_hand_are_drift_and_taken_back() {
    let fake = Fake::new();
    let inv = converge(&fake, vec![namespace("apps"), deployment(2)], &[]).await;
    let path = "/apis/apps/v1/namespaces/apps/deployments/web";
    // `kubectl scale` took `spec.replicas` over.
    fake.edit(path, |o| o["spec"]["replicas"] = json!(7));
    fake.0.lock().expect("lock").owned.push(Owned {
        path: path.into(),
        pointer: "/spec/replicas".into(),
        field: ".spec.replicas".into(),
        manager: "kubectl-scale".into(),
    });
    let planned = plan_on(
        &fake,
        vec![namespace("apps"), deployment(2)],
        &inv,
        options(),
    )
    .await
    .expect("plan");
    assert_eq!(planned.changes.len(), 1);
    assert_eq!(
        planned.changes[0].diff.as_deref(),
        Some("~ spec.replicas: 7 → 2\n")
    );
    assert!(planned.notes.iter().any(|n| n.contains("changed by hand")));
    fake.clear_calls();
    sync::apply(&planned.plan).await.expect("apply");
    let write = fake
        .calls()
        .into_iter()
        .find(|c| c.is_write())
        .expect("a write");
    assert!(write.query.contains("force=true"), "{}", write.query);
    assert_eq!(
        fake.object(path).expect("deployment")["spec"]["replicas"],
        2
    );
}

#[tokio::test]
async fn an_unhealthy_deployment_is_named_with_its_reason() {
    let fake = Fake::new();
    fake.0.lock().expect("lock").deployments_ready = false;
    let after = config_map("after", json!({}));
    let mut after = after;
    after["metadata"]["annotations"] = json!({"argocd.argoproj.io/sync-wave": "5"});
    let planned = plan_on(
        &fake,
        vec![namespace("apps"), deployment(2), after],
        &[],
        Options {
            timeout: Duration::from_millis(60),
            ..options()
        },
    )
    .await
    .expect("plan");
    let failure = sync::apply(&planned.plan).await.expect_err("unhealthy");
    let text = failure.error.to_string();
    assert!(
        text.contains("apps/v1 Deployment apps/web: 0 of 2 updated replicas available"),
        "{text}"
    );
    assert!(text.contains("apply.timeout"), "{text}");
    // The later wave never started; what was applied is in the inventory.
    assert!(
        fake.object("/api/v1/namespaces/apps/configmaps/after")
            .is_none()
    );
    assert_eq!(
        inventory(&failure.inventory),
        vec!["v1 Namespace apps", "apps/v1 Deployment apps/web"]
    );
}

#[tokio::test]
async fn unknown_kinds_and_foreign_objects_are_refused() {
    let fake = Fake::new();
    let err = plan_on(
        &fake,
        vec![json!({"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g"}})],
        &[],
        options(),
    )
    .await
    .expect_err("unknown kind");
    let text = err.to_string();
    assert!(text.contains("example.com/v1 Gadget g"), "{text}");
    assert!(text.contains("apps/web/objects.yaml"), "{text}");
    assert!(text.contains("does not serve kind `Gadget`"), "{text}");

    converge(&fake, vec![namespace("apps")], &[]).await;
    let other = Owner {
        unit: "other".into(),
        ..owner()
    };
    let err = sync::plan(
        Arc::new(fake.cluster()),
        other,
        vec![desired(namespace("apps"))],
        &[],
        options(),
    )
    .await
    .expect_err("owned by another unit");
    assert!(err.to_string().contains("belongs to unit `web`"), "{err}");
}

//! Both stores pass the testkit's store conformance suite, and opening refuses what it must.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use deploy_sql::{OpenError, SCHEMA_VERSION, SqlStore};
use deploy_testkit::conformance;

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(300), f).await.expect("finished in time")
}

#[tokio::test]
async fn sqlite_store_passes_the_store_suite() {
    within(async {
        let (store, _dir) = common::sqlite("conformance").await;
        let report = conformance::store::run_full(&store).await;
        report.assert_conforms();
        assert!(report.not_applicable.is_empty(), "{report}");
    })
    .await;
}

#[tokio::test]
async fn postgres_store_passes_the_store_suite() {
    within(async {
        let Some(store) = common::postgres("postgres_store_passes_the_store_suite").await else { return };
        let report = conformance::store::run_full(&store).await;
        report.assert_conforms();
        assert!(report.not_applicable.is_empty(), "{report}");
    })
    .await;
}

#[tokio::test]
async fn sqlite_state_survives_reopening() {
    within(async {
        use deploy_core::Store;
        let (store, dir) = common::sqlite("reopen").await;
        let name = deploy_testkit::fixtures::env_name("prod");
        let spec = deploy_testkit::fixtures::environment(&["a"], "scripted", Default::default());
        store.put_environment(&name, spec, None, time::OffsetDateTime::now_utc()).await.unwrap();
        store.close().await;
        let again = SqlStore::sqlite(&dir).await.unwrap();
        assert_eq!(again.get_environment(&name).await.unwrap().revision.get(), 1);
    })
    .await;
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_refused() {
    within(async {
        let dir = common::temp_dir("garbage");
        let file = dir.join("deploy.sqlite");
        std::fs::write(&file, vec![0x42u8; 8192]).unwrap();
        match SqlStore::sqlite(&file).await {
            Err(e @ OpenError::NotADatabase { .. }) => assert!(e.to_string().contains("is not an SQLite database")),
            other => panic!("expected NotADatabase, got {other:?}"),
        }
    })
    .await;
}

#[tokio::test]
async fn a_database_from_a_newer_binary_is_refused() {
    within(async {
        let (store, dir) = common::sqlite("newer").await;
        sqlx::query("INSERT INTO deploy_schema (version) VALUES ($1)")
            .bind(SCHEMA_VERSION + 1)
            .execute(store.pool())
            .await
            .unwrap();
        store.close().await;
        match SqlStore::sqlite(&dir).await {
            Err(OpenError::SchemaTooNew { found, supported }) => {
                assert_eq!((found, supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
            }
            other => panic!("expected SchemaTooNew, got {other:?}"),
        }
    })
    .await;
}

#[tokio::test]
async fn sqlite_takes_a_missing_path_for_a_data_directory_and_a_db_name_for_a_file() {
    within(async {
        let dir = common::temp_dir("sqlite-paths");
        // A data directory that does not exist yet is created, with the database inside; never a file in its place.
        let data = dir.join("new-data-dir");
        drop(SqlStore::sqlite(&data).await.unwrap());
        assert!(data.is_dir(), "{} is a directory", data.display());
        assert!(data.join(deploy_sql::DATABASE_FILE).is_file());
        // A name ending in .db is a file, and so is one opened explicitly as a file.
        let named = dir.join("elsewhere/state.db");
        drop(SqlStore::sqlite(&named).await.unwrap());
        assert!(named.is_file());
        let explicit = dir.join("plain-name");
        drop(SqlStore::sqlite_file(&explicit).await.unwrap());
        assert!(explicit.is_file());
        // An existing file stays a file, whatever its name.
        drop(SqlStore::sqlite(&explicit).await.unwrap());
        assert!(explicit.is_file());
    })
    .await;
}

#[tokio::test]
async fn a_row_written_by_a_newer_binary_under_looser_rules_still_reads() {
    within(async {
        use deploy_core::Store;
        let (store, dir) = common::sqlite("tolerant-rows").await;
        let now = time::OffsetDateTime::now_utc();
        let name = deploy_testkit::fixtures::env_name("prod");
        let spec = deploy_testkit::fixtures::environment(&["a"], "scripted", Default::default());
        store.put_environment(&name, spec, None, now).await.unwrap();
        let request = deploy_testkit::fixtures::request("prod", "svc", "2.0");
        let draft = deploy_core::DeploymentDraft {
            id: deploy_core::DeploymentId::new(),
            spec: request.validate().unwrap(),
            created_by: "test".into(),
            plan: deploy_core::TargetPlan::FromSpec,
            rollback_of: None,
            retry_of: None,
            submitted_by: None,
        };
        let accepted = store
            .accept(deploy_core::Acceptance { draft, idempotency: None, expected_revision: None, now, quota: None })
            .await
            .unwrap();
        let id = accepted.deployment.id();
        store.close().await;

        // Rewrite the stored header as a newer binary would have left it: fields unknown here, at the top and in the
        // spec, and a label longer than today's rules allow.
        sqlx::any::install_default_drivers();
        let url = format!("sqlite://{}", dir.join(deploy_sql::DATABASE_FILE).display());
        let pool = sqlx::any::AnyPoolOptions::new().max_connections(1).connect(&url).await.unwrap();
        let header: String = sqlx::Row::get(
            &sqlx::query("SELECT header FROM deploy_deployments WHERE id = $1")
                .bind(id.to_string())
                .fetch_one(&pool)
                .await
                .unwrap(),
            "header",
        );
        let mut doc: serde_json::Value = serde_json::from_str(&header).unwrap();
        doc["owner_team"] = serde_json::json!("payments");
        doc["spec"]["approvals"] = serde_json::json!({"required": 2});
        doc["spec"]["labels"] = serde_json::json!({"note": "x".repeat(300)});
        sqlx::query("UPDATE deploy_deployments SET header = $1 WHERE id = $2")
            .bind(doc.to_string())
            .bind(id.to_string())
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;

        let store = SqlStore::sqlite(&dir).await.unwrap();
        let read = store.get_deployment(id).await.expect("the row reads");
        assert_eq!(read.spec().labels()["note"].len(), 300);
        assert_eq!(read.version().as_str(), "2.0");
    })
    .await;
}

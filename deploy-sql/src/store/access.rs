//! API keys (digests only) and the audit log: `KeyStore` and `AuditLog`.

use super::*;

#[async_trait]
impl KeyStore for SqlStore {
    async fn create_api_key(&self, record: ApiKeyRecord) -> Result<(), StoreError> {
        let mut doc = serde_json::to_value(&record).map_err(|e| corrupt("encoding", e))?;
        if let Some(map) = doc.as_object_mut() {
            map.insert("key_hash".into(), record.key_hash.clone().into());
        }
        sqlx::query("INSERT INTO deploy_api_keys (id, key_hash, name, doc) VALUES ($1, $2, $3, $4)")
            .bind(record.id.to_string())
            .bind(&record.key_hash)
            .bind(&record.name)
            .bind(doc.to_string())
            .execute(&self.pool)
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    // The index on names is the one whose name ends in `_name`; the other is the digest's.
                    let by_name = e.as_database_error().is_some_and(|d| {
                        d.constraint().is_some_and(|c| c.ends_with("_name")) || d.message().contains(".name")
                    });
                    if by_name { record.name_taken() } else { ApiKeyRecord::key_taken() }
                } else {
                    unavailable(e)
                }
            })?;
        Ok(())
    }

    async fn api_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        let row = sqlx::query("SELECT doc FROM deploy_api_keys WHERE key_hash = $1")
            .bind(key_hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.map(|r| decode_api_key(&get::<String>(&r, "doc")?)).transpose()
    }

    async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let rows = sqlx::query("SELECT doc FROM deploy_api_keys ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        rows.iter().map(|r| decode_api_key(&get::<String>(r, "doc")?)).collect()
    }

    async fn delete_api_key(&self, id: Uuid) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM deploy_api_keys WHERE id = $1")
            .bind(id.to_string())
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        if done.rows_affected() == 0 { Err(not_found("api key", id)) } else { Ok(()) }
    }
}

#[async_trait]
impl AuditLog for SqlStore {
    async fn append_audit(&self, entry: AuditEntry) -> Result<(), StoreError> {
        self.grouped(crate::group::Write::Audit(Box::new(entry))).await.map(drop)
    }

    async fn list_audit(&self, filter: &AuditFilter, page: &PageRequest) -> Result<Page<AuditEntry>, StoreError> {
        let limit = page.clamped_limit();
        if let Some(c) = &page.cursor {
            Uuid::parse_str(c).map_err(|_| bad_cursor())?;
        }
        let rows = sqlx::query(
            "SELECT doc FROM deploy_audit WHERE ($1 = '' OR id < $1) AND ($2 = '' OR actor = $2) \
             AND ($3 = '' OR environment = $3) ORDER BY id DESC LIMIT $4",
        )
        .bind(page.cursor.clone().unwrap_or_default())
        .bind(filter.actor.clone().unwrap_or_default())
        .bind(filter.environment.clone().unwrap_or_default())
        .bind(i64::try_from(limit + 1).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        let items: Vec<AuditEntry> =
            rows.iter().map(|r| decode_audit(&get::<String>(r, "doc")?)).collect::<Result<_, _>>()?;
        Ok(Page::from_overfetch(items, limit, |e| e.id.to_string()))
    }
}

/// API key documents carry the digest beside the serialized record (which skips it).
fn decode_api_key(doc: &str) -> Result<ApiKeyRecord, StoreError> {
    let value: serde_json::Value = from_json("api key", doc)?;
    let key_hash = value.get("key_hash").and_then(serde_json::Value::as_str).unwrap_or_default().to_owned();
    let mut record: ApiKeyRecord = serde_json::from_value(value).map_err(|e| corrupt("api key", e))?;
    record.key_hash = key_hash;
    Ok(record)
}

/// Audit documents carry the id beside the serialized entry (which skips it).
fn decode_audit(doc: &str) -> Result<AuditEntry, StoreError> {
    let value: serde_json::Value = from_json("audit entry", doc)?;
    let id = value.get("id").and_then(serde_json::Value::as_str).and_then(|s| Uuid::parse_str(s).ok());
    let mut entry: AuditEntry = serde_json::from_value(value).map_err(|e| corrupt("audit entry", e))?;
    entry.id = id.ok_or_else(|| corrupt("audit entry", "missing id"))?;
    Ok(entry)
}

//! [`Store`](crate::Store) for both backends: one macro, the same SQL text.

/// Implements [`Store`](crate::Store) for a backend struct with `write`/`read` pools of `$db`.
macro_rules! impl_store {
    ($store:ty, $db:ty) => {
        #[async_trait::async_trait]
        impl $crate::Store for $store {
            async fn register(
                &self,
                reg: &$crate::model::Registration,
                now_ms: i64,
            ) -> $crate::Result<$crate::model::Registered> {
                use $crate::model::Registered;
                let mut writer = self.writer().await?;
                let mut tx = sqlx::Connection::begin(&mut *writer).await?;
                let thread = reg.thread.as_bytes();
                let held: Option<(Vec<u8>, i64)> =
                    sqlx::query_as("SELECT follow_key, created_at FROM threads WHERE id = $1")
                        .bind(thread)
                        .fetch_optional(&mut *tx)
                        .await?;
                let mut created_at = now_ms;
                let replaced = match &held {
                    Some((key, _)) if key[..] == reg.follow_key.as_bytes()[..] => false,
                    Some(_) if !reg.thread.is_bound_to(&reg.follow_key) => {
                        return Err($crate::StoreError::Conflict("follow_key_mismatch"));
                    }
                    // The ID names this registration's key: the one stored is a squatter's.
                    // Its logs, records and deliveries go, its webhooks by cascade.
                    Some((_, squatted_at)) => {
                        for table in ["records", "forks", "deliveries", "logs", "threads"] {
                            let column = if table == "threads" { "id" } else { "thread_id" };
                            sqlx::query(&format!("DELETE FROM {table} WHERE {column} = $1"))
                                .bind(thread)
                                .execute(&mut *tx)
                                .await?;
                        }
                        // A new incarnation, so cursors into the squatter's restart.
                        created_at = created_at.max(squatted_at + 1);
                        true
                    }
                    None => false,
                };
                if held.is_some() && !replaced {
                    sqlx::query("UPDATE threads SET public = $2 WHERE id = $1")
                        .bind(thread)
                        .bind(reg.public)
                        .execute(&mut *tx)
                        .await?;
                } else {
                    sqlx::query(
                        "INSERT INTO threads (id, public, follow_key, created_at) VALUES ($1, $2, $3, $4)",
                    )
                    .bind(thread)
                    .bind(reg.public)
                    .bind(&reg.follow_key.as_bytes()[..])
                    .bind(created_at)
                    .execute(&mut *tx)
                    .await?;
                }
                let addrs = serde_json::to_string(&reg.addrs).expect("strings serialize");
                let updated = sqlx::query("UPDATE logs SET addrs = $3, addrs_at = $4 WHERE thread_id = $1 AND log_id = $2")
                    .bind(thread)
                    .bind(reg.log.to_bytes())
                    .bind(&addrs)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if updated == 0 {
                    sqlx::query(
                        "INSERT INTO logs (thread_id, log_id, addrs, registered_at, addrs_at) VALUES ($1, $2, $3, $4, $4)",
                    )
                    .bind(thread)
                    .bind(reg.log.to_bytes())
                    .bind(&addrs)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(match (replaced, updated) {
                    (true, _) => Registered::Replaced,
                    (false, 0) => Registered::Created,
                    (false, _) => Registered::Updated,
                })
            }

            async fn unregister_log(
                &self,
                thread: &threads_core::ThreadId,
                log: &threads_core::LogId,
            ) -> $crate::Result<()> {
                let mut writer = self.writer().await?;
                let mut tx = sqlx::Connection::begin(&mut *writer).await?;
                let (t, l) = (thread.as_bytes(), log.to_bytes());
                let lock = sqlx::query("UPDATE threads SET seq = seq WHERE id = $1")
                    .bind(t)
                    .execute(&mut *tx)
                    .await?;
                if lock.rows_affected() == 0 {
                    return Err($crate::StoreError::NotFound);
                }
                let removed: Option<(i64, i64)> = sqlx::query_as(
                    "SELECT head_counter, byte_count FROM logs WHERE thread_id = $1 AND log_id = $2",
                )
                .bind(t)
                .bind(&l)
                .fetch_optional(&mut *tx)
                .await?;
                let Some((count, bytes)) = removed else {
                    return Err($crate::StoreError::NotFound);
                };
                // Its webhook deliveries go too (their attempts by cascade): they point at
                // records that no longer exist.
                for table in ["records", "forks", "deliveries", "logs"] {
                    sqlx::query(&format!("DELETE FROM {table} WHERE thread_id = $1 AND log_id = $2"))
                        .bind(t)
                        .bind(&l)
                        .execute(&mut *tx)
                        .await?;
                }
                sqlx::query(
                    "UPDATE threads SET record_count = record_count - $2, byte_count = byte_count - $3 WHERE id = $1",
                )
                .bind(t)
                .bind(count)
                .bind(bytes)
                .execute(&mut *tx)
                .await?;
                // A thread with no logs left holds nothing: remove it too.
                sqlx::query(
                    "DELETE FROM threads WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM logs WHERE thread_id = $1)",
                )
                .bind(t)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn delete_thread(&self, thread: &threads_core::ThreadId) -> $crate::Result<()> {
                let mut writer = self.writer().await?;
                let mut tx = sqlx::Connection::begin(&mut *writer).await?;
                let t = thread.as_bytes();
                for table in ["records", "forks", "logs"] {
                    sqlx::query(&format!("DELETE FROM {table} WHERE thread_id = $1"))
                        .bind(t)
                        .execute(&mut *tx)
                        .await?;
                }
                let gone = sqlx::query("DELETE FROM threads WHERE id = $1")
                    .bind(t)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if gone == 0 {
                    return Err($crate::StoreError::NotFound);
                }
                tx.commit().await?;
                Ok(())
            }

            async fn thread(
                &self,
                thread: &threads_core::ThreadId,
            ) -> $crate::Result<Option<$crate::model::ThreadInfo>> {
                let row: Option<$crate::sql::rows::ThreadRow> = sqlx::query_as(
                    "SELECT id, public, follow_key, seq, record_count, byte_count, created_at FROM threads WHERE id = $1",
                )
                .bind(thread.as_bytes())
                .fetch_optional(&self.read)
                .await?;
                row.map(|r| r.into_info()).transpose()
            }

            async fn public_threads(
                &self,
                after: Option<&threads_core::ThreadId>,
                limit: u32,
            ) -> $crate::Result<Vec<$crate::model::ThreadInfo>> {
                let rows: Vec<$crate::sql::rows::ThreadRow> = sqlx::query_as(
                    "SELECT id, public, follow_key, seq, record_count, byte_count, created_at FROM threads \
                     WHERE public AND id > $1 ORDER BY id LIMIT $2",
                )
                .bind(after.map(|a| a.as_bytes().to_vec()).unwrap_or_default())
                .bind(i64::from(limit))
                .fetch_all(&self.read)
                .await?;
                rows.into_iter().map(|r| r.into_info()).collect()
            }

            async fn thread_seqs(
                &self,
                threads: &[threads_core::ThreadId],
            ) -> $crate::Result<Vec<(threads_core::ThreadId, u64)>> {
                let mut out = Vec::with_capacity(threads.len());
                for chunk in threads.chunks(500) {
                    let mut q = sqlx::QueryBuilder::<$db>::new("SELECT id, seq FROM threads WHERE id IN (");
                    let mut sep = q.separated(", ");
                    for thread in chunk {
                        sep.push_bind(thread.as_bytes());
                    }
                    sep.push_unseparated(")");
                    let rows: Vec<(Vec<u8>, i64)> = q.build_query_as().fetch_all(&self.read).await?;
                    for (id, seq) in rows {
                        out.push(($crate::sql::rows::thread_id(&id)?, seq as u64));
                    }
                }
                Ok(out)
            }

            async fn logs(
                &self,
                thread: &threads_core::ThreadId,
            ) -> $crate::Result<Vec<$crate::model::LogInfo>> {
                let rows: Vec<$crate::sql::rows::LogRow> = sqlx::query_as(
                    "SELECT thread_id, log_id, addrs, head_cid, head_counter, byte_count, registered_at, addrs_at \
                     FROM logs WHERE thread_id = $1 ORDER BY log_id",
                )
                .bind(thread.as_bytes())
                .fetch_all(&self.read)
                .await?;
                rows.into_iter().map(|r| r.into_info()).collect()
            }

            async fn log(
                &self,
                thread: &threads_core::ThreadId,
                log: &threads_core::LogId,
            ) -> $crate::Result<Option<$crate::model::LogInfo>> {
                let row: Option<$crate::sql::rows::LogRow> = sqlx::query_as(
                    "SELECT thread_id, log_id, addrs, head_cid, head_counter, byte_count, registered_at, addrs_at \
                     FROM logs WHERE thread_id = $1 AND log_id = $2",
                )
                .bind(thread.as_bytes())
                .bind(log.to_bytes())
                .fetch_optional(&self.read)
                .await?;
                row.map(|r| r.into_info()).transpose()
            }

            async fn ingest(
                &self,
                batch: &[$crate::model::Ingest],
                quotas: &$crate::model::Quotas,
                now_ms: i64,
            ) -> $crate::Result<Vec<$crate::model::Outcome>> {
                self.ingest_group(batch, quotas, now_ms).await
            }

            async fn records_by_log(
                &self,
                thread: &threads_core::ThreadId,
                log: &threads_core::LogId,
                after: u64,
                limit: u32,
            ) -> $crate::Result<Vec<$crate::model::StoredRecord>> {
                self.page_by_log(thread, log, after, limit).await
            }

            async fn records_by_thread(
                &self,
                thread: &threads_core::ThreadId,
                after: u64,
                limit: u32,
            ) -> $crate::Result<Vec<$crate::model::StoredRecord>> {
                self.page_by_thread(thread, after, limit).await
            }

            async fn block(
                &self,
                cid: &threads_core::Cid,
            ) -> $crate::Result<Option<(threads_core::ThreadId, Vec<u8>)>> {
                // Only a record's own CID is indexed across threads (see migration 0007).
                let row: Option<(Vec<u8>, Vec<u8>)> = sqlx::query_as(
                    "SELECT thread_id, record FROM records WHERE substr(cid, 5, 8) = $2 AND cid = $1 LIMIT 1",
                )
                .bind(cid.to_bytes())
                .bind($crate::sql::rule::cid_prefix(&cid.to_bytes()))
                .fetch_optional(&self.read)
                .await?;
                row.map(|(thread, bytes)| Ok(($crate::sql::rows::thread_id(&thread)?, bytes)))
                    .transpose()
            }

            async fn block_in(
                &self,
                thread: &threads_core::ThreadId,
                cid: &threads_core::Cid,
            ) -> $crate::Result<Option<Vec<u8>>> {
                // One indexed probe per kind of node; the first that holds the CID answers.
                let row: Option<(Vec<u8>,)> = sqlx::query_as(
                    "SELECT record FROM records WHERE substr(cid, 5, 8) = $2 AND cid = $1 AND thread_id = $3 \
                     UNION ALL SELECT event FROM records \
                     WHERE thread_id = $3 AND substr(event_cid, 5, 8) = $2 AND event_cid = $1 \
                     UNION ALL SELECT header FROM records \
                     WHERE thread_id = $3 AND substr(header_cid, 5, 8) = $2 AND header_cid = $1 \
                     UNION ALL SELECT body FROM records \
                     WHERE thread_id = $3 AND substr(body_cid, 5, 8) = $2 AND body_cid = $1 LIMIT 1",
                )
                .bind(cid.to_bytes())
                .bind($crate::sql::rule::cid_prefix(&cid.to_bytes()))
                .bind(thread.as_bytes())
                .fetch_optional(&self.read)
                .await?;
                Ok(row.map(|(bytes,)| bytes))
            }

            async fn forks(
                &self,
                thread: &threads_core::ThreadId,
                log: &threads_core::LogId,
            ) -> $crate::Result<Vec<$crate::model::ForkEvidence>> {
                let rows: Vec<$crate::sql::rows::ForkRow> = sqlx::query_as(
                    "SELECT cid, prev, record, event, header, body, arrived_at FROM forks \
                     WHERE thread_id = $1 AND log_id = $2 ORDER BY arrived_at, cid",
                )
                .bind(thread.as_bytes())
                .bind(log.to_bytes())
                .fetch_all(&self.read)
                .await?;
                rows.into_iter().map(|r| r.into_evidence()).collect()
            }

            async fn use_nonce(&self, nonce: &[u8], expires_ms: i64, now_ms: i64) -> $crate::Result<bool> {
                let mut writer = self.writer().await?;
                // One transaction: one commit to flush.
                let mut tx = sqlx::Connection::begin(&mut *writer).await?;
                sqlx::query(<$store>::PRUNE_NONCES)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await?;
                // A nonce is fresh if unknown, or known but expired (not pruned yet).
                let fresh = sqlx::query(
                    "INSERT INTO request_nonces (nonce, expires_at) VALUES ($1, $2) \
                     ON CONFLICT (nonce) DO UPDATE SET expires_at = excluded.expires_at \
                     WHERE request_nonces.expires_at < $3",
                )
                .bind(nonce)
                .bind(expires_ms)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1;
                tx.commit().await?;
                Ok(fresh)
            }

            async fn add_registration_token(&self, token_hash: &[u8], note: &str, now_ms: i64) -> $crate::Result<()> {
                sqlx::query(
                    "INSERT INTO registration_tokens (token_hash, note, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                )
                .bind(token_hash)
                .bind(note)
                .bind(now_ms)
                .execute(&mut *self.writer().await?)
                .await?;
                Ok(())
            }

            async fn registration_token_exists(&self, token_hash: &[u8]) -> $crate::Result<bool> {
                let row: Option<(String,)> =
                    sqlx::query_as("SELECT note FROM registration_tokens WHERE token_hash = $1")
                        .bind(token_hash)
                        .fetch_optional(&self.read)
                        .await?;
                Ok(row.is_some())
            }

            async fn server_id(&self) -> $crate::Result<String> {
                use rand_core::RngCore;
                let mut random = [0u8; 16];
                rand_core::OsRng.fill_bytes(&mut random);
                let fresh: String = random.iter().map(|b| format!("{b:02x}")).collect();
                sqlx::query("INSERT INTO settings (name, value) VALUES ('server_id', $1) ON CONFLICT DO NOTHING")
                    .bind(format!("threads-{fresh}"))
                    .execute(&mut *self.writer().await?)
                    .await?;
                let (id,): (String,) = sqlx::query_as("SELECT value FROM settings WHERE name = 'server_id'")
                    .fetch_one(&mut *self.writer().await?)
                    .await?;
                Ok(id)
            }

            async fn records_at(
                &self,
                thread: &threads_core::ThreadId,
                seqs: &[u64],
            ) -> $crate::Result<Vec<$crate::model::StoredRecord>> {
                let mut out = Vec::with_capacity(seqs.len());
                for chunk in seqs.chunks(500) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(format!(
                        "SELECT {} FROM records WHERE thread_id = ",
                        $crate::sql::rows::RECORD_COLUMNS
                    ));
                    q.push_bind(thread.as_bytes()).push(" AND seq IN (");
                    let mut sep = q.separated(", ");
                    for seq in chunk {
                        sep.push_bind(*seq as i64);
                    }
                    sep.push_unseparated(")");
                    let rows: Vec<$crate::sql::rows::RecordRow> = q.build_query_as().fetch_all(&self.read).await?;
                    out.extend($crate::sql::rows::into_stored(thread, rows)?);
                }
                Ok(out)
            }

            fn writers(&self) -> usize {
                <$store>::WRITERS
            }

            fn changes(&self) -> tokio::sync::broadcast::Receiver<$crate::Change> {
                self.changes.subscribe()
            }

            async fn ping(&self) -> $crate::Result<()> {
                sqlx::query("SELECT 1").execute(&self.read).await?;
                Ok(())
            }

            async fn lease(
                &self,
                name: &str,
                holder: &str,
                now_ms: i64,
                lease_ms: i64,
            ) -> $crate::Result<bool> {
                let taken = sqlx::query(
                    "INSERT INTO leases (name, holder, until_ms) VALUES ($1, $2, $3) \
                     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until_ms = excluded.until_ms \
                     WHERE leases.holder = excluded.holder OR leases.until_ms <= $4",
                )
                .bind(name)
                .bind(holder)
                .bind(now_ms + lease_ms)
                .bind(now_ms)
                .execute(&mut *self.writer().await?)
                .await?
                .rows_affected();
                Ok(taken == 1)
            }
        }
    };
}

pub(crate) use impl_store;

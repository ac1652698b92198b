//! [`WebhookStore`](crate::WebhookStore) for both backends: one macro, the same SQL text.

/// Implements [`WebhookStore`](crate::WebhookStore) for a backend struct with `write`/`read`
/// pools of `$db`.
macro_rules! impl_webhook_store {
    ($store:ty, $db:ty) => {
        #[async_trait::async_trait]
        impl $crate::WebhookStore for $store {
            async fn create_webhook(&self, hook: &$crate::model::Webhook) -> $crate::Result<()> {
                let created = sqlx::query(
                    "INSERT INTO webhooks (id, thread_id, log_id, url, secret, created_at, cursor_seq) \
                     SELECT $1, id, $3, $4, $5, $6, seq FROM threads WHERE id = $2",
                )
                .bind(&hook.id)
                .bind(hook.thread.as_bytes())
                .bind(hook.log.as_ref().map(|l| l.to_bytes()))
                .bind(&hook.url)
                .bind(&hook.secret)
                .bind(hook.created_ms)
                .execute(&mut *self.writer().await?)
                .await?
                .rows_affected();
                if created == 0 {
                    return Err($crate::StoreError::NotFound);
                }
                Ok(())
            }

            async fn webhook(&self, id: &str) -> $crate::Result<Option<$crate::model::Webhook>> {
                let row: Option<$crate::sql::rows::WebhookRow> = sqlx::query_as(&format!(
                    "SELECT {} FROM webhooks WHERE id = $1",
                    $crate::sql::rows::WEBHOOK_COLUMNS
                ))
                .bind(id)
                .fetch_optional(&self.read)
                .await?;
                row.map(|r| r.into_webhook()).transpose()
            }

            async fn webhook_count(&self) -> $crate::Result<u64> {
                let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM webhooks")
                    .fetch_one(&self.read)
                    .await?;
                Ok(count as u64)
            }

            async fn webhooks_of(
                &self,
                thread: &threads_core::ThreadId,
            ) -> $crate::Result<Vec<$crate::model::Webhook>> {
                let rows: Vec<$crate::sql::rows::WebhookRow> = sqlx::query_as(&format!(
                    "SELECT {} FROM webhooks WHERE thread_id = $1 ORDER BY created_at, id",
                    $crate::sql::rows::WEBHOOK_COLUMNS
                ))
                .bind(thread.as_bytes())
                .fetch_all(&self.read)
                .await?;
                rows.into_iter().map(|r| r.into_webhook()).collect()
            }

            async fn webhook_threads(&self) -> $crate::Result<Vec<threads_core::ThreadId>> {
                let rows: Vec<(Vec<u8>,)> = sqlx::query_as(
                    "SELECT DISTINCT thread_id FROM webhooks WHERE disabled_at IS NULL",
                )
                .fetch_all(&self.read)
                .await?;
                rows.iter().map(|(id,)| $crate::sql::rows::thread_id(id)).collect()
            }

            async fn webhook_gauges(&self) -> $crate::Result<$crate::model::WebhookGauges> {
                let (behind, disabled): (i64, i64) = sqlx::query_as(
                    "SELECT \
                       CAST(COALESCE(SUM(CASE WHEN w.disabled_at IS NULL THEN t.seq - w.cursor_seq ELSE 0 END), 0) AS BIGINT), \
                       CAST(COALESCE(SUM(CASE WHEN w.disabled_at IS NULL THEN 0 ELSE 1 END), 0) AS BIGINT) \
                     FROM webhooks w JOIN threads t ON t.id = w.thread_id",
                )
                .fetch_one(&self.read)
                .await?;
                let (retrying,): (i64,) =
                    sqlx::query_as("SELECT COUNT(*) FROM deliveries WHERE state = 'pending'")
                        .fetch_one(&self.read)
                        .await?;
                Ok($crate::model::WebhookGauges {
                    backlog_records: (behind.max(0) + retrying) as u64,
                    disabled: disabled as u64,
                })
            }

            async fn delete_webhook(&self, thread: &threads_core::ThreadId, id: &str) -> $crate::Result<()> {
                // Its deliveries and their attempts go by cascade (both backends enforce
                // foreign keys).
                let gone = sqlx::query("DELETE FROM webhooks WHERE thread_id = $1 AND id = $2")
                    .bind(thread.as_bytes())
                    .bind(id)
                    .execute(&mut *self.writer().await?)
                    .await?
                    .rows_affected();
                if gone == 0 {
                    return Err($crate::StoreError::NotFound);
                }
                Ok(())
            }

            async fn set_webhook_secret(
                &self,
                thread: &threads_core::ThreadId,
                id: &str,
                secret: &str,
            ) -> $crate::Result<()> {
                let updated = sqlx::query("UPDATE webhooks SET secret = $3 WHERE thread_id = $1 AND id = $2")
                    .bind(thread.as_bytes())
                    .bind(id)
                    .bind(secret)
                    .execute(&mut *self.writer().await?)
                    .await?
                    .rows_affected();
                if updated == 0 {
                    return Err($crate::StoreError::NotFound);
                }
                Ok(())
            }

            async fn enable_webhook(
                &self,
                thread: &threads_core::ThreadId,
                id: &str,
                now_ms: i64,
            ) -> $crate::Result<()> {
                let mut writer = self.writer().await?;
                let mut tx = sqlx::Connection::begin(&mut *writer).await?;
                let updated = sqlx::query(
                    "UPDATE webhooks SET disabled_at = NULL, disabled_reason = NULL, failures = 0 \
                     WHERE thread_id = $1 AND id = $2",
                )
                .bind(thread.as_bytes())
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if updated == 0 {
                    return Err($crate::StoreError::NotFound);
                }
                sqlx::query(
                    "UPDATE deliveries SET state = 'pending', next_at = $3 \
                     WHERE thread_id = $1 AND webhook_id = $2 AND state = 'paused'",
                )
                .bind(thread.as_bytes())
                .bind(id)
                .bind(now_ms)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn deliveries(
                &self,
                thread: &threads_core::ThreadId,
                webhook: &str,
                after: i64,
                limit: u32,
            ) -> $crate::Result<Vec<($crate::model::Delivery, Vec<$crate::model::Attempt>)>> {
                let rows: Vec<$crate::sql::rows::DeliveryRow> = sqlx::query_as(&format!(
                    "SELECT {} FROM deliveries WHERE thread_id = $1 AND webhook_id = $2 AND id > $3 \
                     ORDER BY id LIMIT $4",
                    $crate::sql::rows::DELIVERY_COLUMNS
                ))
                .bind(thread.as_bytes())
                .bind(webhook)
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(&self.read)
                .await?;
                let Some(last) = rows.last().map(|r| r.id) else {
                    return Ok(Vec::new());
                };
                // The page's failed attempts in one query, by delivery.
                let failures: Vec<(i64, i64, Option<i32>, Option<String>, i64)> = sqlx::query_as(
                    "SELECT a.delivery_id, a.at, a.status, a.error, a.duration_ms FROM delivery_attempts a \
                     JOIN deliveries d ON d.thread_id = a.thread_id AND d.id = a.delivery_id \
                     WHERE a.thread_id = $1 AND d.webhook_id = $2 AND a.delivery_id > $3 AND a.delivery_id <= $4 \
                     ORDER BY a.delivery_id, a.at",
                )
                .bind(thread.as_bytes())
                .bind(webhook)
                .bind(after)
                .bind(last)
                .fetch_all(&self.read)
                .await?;
                let mut failures_by: std::collections::HashMap<i64, Vec<$crate::model::Attempt>> = Default::default();
                for (id, at_ms, status, error, duration_ms) in failures {
                    failures_by.entry(id).or_default().push($crate::model::Attempt {
                        at_ms,
                        status: status.map(|s| s as u16),
                        error,
                        duration_ms,
                    });
                }
                rows.into_iter()
                    .map(|row| {
                        let success = row.success();
                        let delivery = row.into_delivery()?;
                        let mut attempts = failures_by.remove(&delivery.id).unwrap_or_default();
                        attempts.extend(success);
                        Ok((delivery, attempts))
                    })
                    .collect()
            }

            async fn queue_deliveries(
                &self,
                thread: &threads_core::ThreadId,
                webhook: &str,
                after: u64,
                test: bool,
                now_ms: i64,
            ) -> $crate::Result<u64> {
                let row: Option<$crate::sql::rows::WebhookRow> = sqlx::query_as(&format!(
                    "SELECT {} FROM webhooks WHERE thread_id = $1 AND id = $2",
                    $crate::sql::rows::WEBHOOK_COLUMNS
                ))
                .bind(thread.as_bytes())
                .bind(webhook)
                .fetch_optional(&self.read)
                .await?;
                let Some(hook) = row.map(|r| r.into_webhook()).transpose()? else {
                    return Err($crate::StoreError::NotFound);
                };
                // A disabled webhook's deliveries wait for it to be enabled again.
                let state = if hook.disabled_ms.is_some() { "paused" } else { "pending" };
                let queued = if test {
                    sqlx::query(&format!(
                        "INSERT INTO deliveries (webhook_id, event, thread_id, created_at, next_at, state) \
                         VALUES ($1, 'webhook.test', $2, $3, $3, '{state}')"
                    ))
                    .bind(webhook)
                    .bind(hook.thread.as_bytes())
                    .bind(now_ms)
                    .execute(&mut *self.writer().await?)
                    .await?
                } else {
                    let filter = if hook.log.is_some() { "AND log_id = $5" } else { "" };
                    // Only what the cursor has passed: the records after it are on their way. A
                    // record is the same message each time it is sent: the `webhook-id` of its
                    // first delivery, so receivers de-duplicate replays.
                    let cursor = hook.cursor;
                    let sql = format!(
                        "INSERT INTO deliveries (webhook_id, event, thread_id, log_id, seq, counter, cid, created_at, next_at, state, message_id) \
                         SELECT $1, 'record.created', thread_id, log_id, seq, counter, cid, $3, $3, '{state}', \
                         'msg_' || CAST($1 AS TEXT) || '_' || CAST(seq AS TEXT) FROM records \
                         WHERE thread_id = $2 AND seq > $4 AND seq <= {cursor} {filter} ORDER BY seq"
                    );
                    let mut query = sqlx::query(&sql)
                        .bind(webhook)
                        .bind(hook.thread.as_bytes())
                        .bind(now_ms)
                        .bind(after as i64);
                    if let Some(log) = &hook.log {
                        query = query.bind(log.to_bytes());
                    }
                    query.execute(&mut *self.writer().await?).await?
                };
                Ok(queued.rows_affected())
            }

            async fn claim_deliveries(
                &self,
                now_ms: i64,
                lease_ms: i64,
                limit: u32,
            ) -> $crate::Result<Vec<($crate::model::Delivery, $crate::model::Webhook)>> {
                let sql = format!("{} RETURNING {}", <$store>::CLAIM_DELIVERIES, $crate::sql::rows::DELIVERY_COLUMNS);
                let mut writer = self.writer().await?;
                let mut tx = sqlx::Connection::begin(&mut *writer).await?;
                if let Some(setup) = <$store>::CLAIM_SETUP {
                    sqlx::query(setup).execute(&mut *tx).await?;
                }
                let rows: Vec<$crate::sql::rows::DeliveryRow> = sqlx::query_as(&sql)
                    .bind(now_ms)
                    .bind(now_ms + lease_ms)
                    .bind(i64::from(limit))
                    .fetch_all(&mut *tx)
                    .await?;
                let mut out = Vec::with_capacity(rows.len());
                let mut hooks: std::collections::HashMap<(threads_core::ThreadId, String), $crate::model::Webhook> =
                    Default::default();
                let mut paused = Vec::new();
                for row in rows {
                    let delivery = row.into_delivery()?;
                    let key = (delivery.thread.clone(), delivery.webhook.clone());
                    let hook = match hooks.get(&key) {
                        Some(h) => h.clone(),
                        None => {
                            let row: $crate::sql::rows::WebhookRow = sqlx::query_as(&format!(
                                "SELECT {} FROM webhooks WHERE thread_id = $1 AND id = $2",
                                $crate::sql::rows::WEBHOOK_COLUMNS
                            ))
                            .bind(delivery.thread.as_bytes())
                            .bind(&delivery.webhook)
                            .fetch_one(&mut *tx)
                            .await?;
                            let h = row.into_webhook()?;
                            hooks.insert(key, h.clone());
                            h
                        }
                    };
                    // Disabled meanwhile (its deliveries were paused while this one was in
                    // flight, and it came back as a retry): paused too, not sent.
                    if hook.disabled_ms.is_some() {
                        paused.push((delivery.thread, delivery.id));
                    } else {
                        out.push((delivery, hook));
                    }
                }
                for (thread, id) in paused {
                    sqlx::query(
                        "UPDATE deliveries SET state = 'paused', leased_until = 0, attempts = attempts - 1 \
                         WHERE thread_id = $1 AND id = $2",
                    )
                    .bind(thread.as_bytes())
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(out)
            }

            async fn claim_webhooks(
                &self,
                now_ms: i64,
                lease_ms: i64,
                limit: u32,
            ) -> $crate::Result<Vec<$crate::model::WebhookLease>> {
                let leased_until = now_ms + lease_ms;
                let mut writer = self.writer().await?;
                let mut tx = sqlx::Connection::begin(&mut *writer).await?;
                let rows: Vec<$crate::sql::rows::WebhookRow> = sqlx::query_as(&format!(
                    "{} RETURNING {}",
                    <$store>::CLAIM_WEBHOOKS,
                    $crate::sql::rows::WEBHOOK_COLUMNS
                ))
                .bind(now_ms)
                .bind(leased_until)
                .bind(i64::from(limit))
                .fetch_all(&mut *tx)
                .await?;
                let mut out = Vec::with_capacity(rows.len());
                for row in rows {
                    let webhook = row.into_webhook()?;
                    let (seq,): (i64,) = sqlx::query_as("SELECT seq FROM threads WHERE id = $1")
                        .bind(webhook.thread.as_bytes())
                        .fetch_one(&mut *tx)
                        .await?;
                    out.push($crate::model::WebhookLease { webhook, seq: seq as u64, leased_until });
                }
                tx.commit().await?;
                Ok(out)
            }

            async fn finish_deliveries(
                &self,
                results: &[(threads_core::ThreadId, i64, $crate::model::Attempt, $crate::model::AttemptResult)],
                cursors: &[$crate::model::CursorOutcome],
            ) -> $crate::Result<()> {
                use $crate::model::{Attempt, AttemptResult};
                fn row_state(attempt: &Attempt, result: &AttemptResult) -> (&'static str, i64) {
                    match result {
                        AttemptResult::Delivered => ("delivered", attempt.at_ms),
                        AttemptResult::Failed { retry_ms: Some(at), .. } => ("pending", *at),
                        AttemptResult::Failed { retry_ms: None, .. } => ("failed", attempt.at_ms),
                    }
                }
                let delivered = |result: &AttemptResult| *result == AttemptResult::Delivered;
                let mut writer = self.writer().await?;
                let mut tx = sqlx::Connection::begin(&mut *writer).await?;
                // Each webhook's outcomes in order, for its count of failures in a row.
                let mut by_hook: std::collections::HashMap<(&threads_core::ThreadId, String), Vec<(&Attempt, &AttemptResult)>> =
                    Default::default();
                // Failed attempts are kept apart; a successful one lives in its delivery's row.
                let mut failed: Vec<(&threads_core::ThreadId, i64, &Attempt)> = Vec::new();
                for chunk in results.chunks(500) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "UPDATE deliveries SET state = v.column3, next_at = v.column4, leased_until = 0, \
                         last_status = v.column5, last_error = v.column6, \
                         delivered_at = CASE WHEN v.column3 = 'delivered' THEN v.column7 ELSE deliveries.delivered_at END, \
                         duration_ms = CASE WHEN v.column3 = 'delivered' THEN v.column8 ELSE deliveries.duration_ms END \
                         FROM (",
                    );
                    q.push_values(chunk, |mut row, (thread, id, attempt, result)| {
                        let (state, next) = row_state(attempt, result);
                        row.push_bind(thread.as_bytes())
                            .push_bind(*id)
                            .push_bind(state)
                            .push_bind(next)
                            .push_bind(attempt.status.map(i32::from))
                            .push_bind(attempt.error.as_deref())
                            .push_bind(attempt.at_ms)
                            .push_bind(attempt.duration_ms);
                    });
                    q.push(
                        ") AS v WHERE deliveries.thread_id = v.column1 AND deliveries.id = v.column2 \
                         RETURNING deliveries.thread_id, deliveries.id, deliveries.webhook_id",
                    );
                    let found: Vec<(Vec<u8>, i64, String)> = q.build_query_as().fetch_all(&mut *tx).await?;
                    // Those deleted while they were being sent (their webhook or log went)
                    // are not found: nothing to record of them.
                    let found: std::collections::HashMap<(Vec<u8>, i64), String> =
                        found.into_iter().map(|(thread, id, hook)| ((thread, id), hook)).collect();
                    for (thread, id, attempt, result) in chunk {
                        let Some(hook) = found.get(&(thread.as_bytes().to_vec(), *id)) else { continue };
                        by_hook.entry((thread, hook.clone())).or_default().push((attempt, result));
                        if !delivered(result) {
                            failed.push((thread, *id, attempt));
                        }
                    }
                }
                for outcome in cursors {
                    // Not moved when the webhook is gone, or when its lease ran out and another
                    // worker took the cursor: that one sends these records again.
                    let moved = sqlx::query(
                        "UPDATE webhooks SET cursor_seq = $3, leased_until = 0 \
                         WHERE thread_id = $1 AND id = $2 AND leased_until = $4",
                    )
                    .bind(outcome.thread.as_bytes())
                    .bind(&outcome.webhook)
                    .bind(outcome.cursor as i64)
                    .bind(outcome.leased_until)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if moved == 0 {
                        continue;
                    }
                    for chunk in outcome.sent.chunks(500) {
                        let mut q = sqlx::QueryBuilder::<$db>::new(
                            "INSERT INTO deliveries (webhook_id, event, thread_id, log_id, seq, counter, cid, created_at, \
                             state, attempts, next_at, last_status, last_error, delivered_at, duration_ms, message_id) ",
                        );
                        q.push_values(chunk, |mut row, (d, attempt, result)| {
                            let (state, next) = row_state(attempt, result);
                            let done = delivered(result);
                            row.push_bind(&outcome.webhook)
                                .push_bind(&d.event)
                                .push_bind(d.thread.as_bytes())
                                .push_bind(d.log.as_ref().map(|l| l.to_bytes()))
                                .push_bind(d.seq as i64)
                                .push_bind(d.counter as i64)
                                .push_bind(d.cid.as_ref().map(|c| c.to_bytes()))
                                .push_bind(d.created_ms)
                                .push_bind(state)
                                .push_bind(1i32)
                                .push_bind(next)
                                .push_bind(attempt.status.map(i32::from))
                                .push_bind(attempt.error.as_deref())
                                .push_bind(done.then_some(attempt.at_ms))
                                .push_bind(done.then_some(attempt.duration_ms))
                                .push_bind(&d.message_id);
                        });
                        q.push(" RETURNING id, message_id");
                        let ids: Vec<(i64, String)> = q.build_query_as().fetch_all(&mut *tx).await?;
                        let ids: std::collections::HashMap<String, i64> =
                            ids.into_iter().map(|(id, message)| (message, id)).collect();
                        for (d, attempt, result) in chunk {
                            if !delivered(result) {
                                failed.push((&outcome.thread, ids[&d.message_id], attempt));
                            }
                        }
                    }
                    let outcomes = by_hook.entry((&outcome.thread, outcome.webhook.clone())).or_default();
                    outcomes.extend(outcome.sent.iter().map(|(_, a, r)| (a, r)));
                }
                for chunk in failed.chunks(500) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO delivery_attempts (thread_id, delivery_id, at, status, error, duration_ms) ",
                    );
                    q.push_values(chunk, |mut row, (thread, id, attempt)| {
                        row.push_bind(thread.as_bytes())
                            .push_bind(*id)
                            .push_bind(attempt.at_ms)
                            .push_bind(attempt.status.map(i32::from))
                            .push_bind(attempt.error.as_deref())
                            .push_bind(attempt.duration_ms);
                    });
                    q.build().execute(&mut *tx).await?;
                }
                for ((thread, hook), outcomes) in by_hook {
                    let last_success = outcomes.iter().rposition(|(_, r)| delivered(r));
                    let failed_after = &outcomes[last_success.map_or(0, |p| p + 1)..];
                    let Some(&(attempt, result)) = failed_after.last() else {
                        // Only when there is something to reset: a webhook's row is not
                        // written by every batch of successful deliveries.
                        sqlx::query("UPDATE webhooks SET failures = 0 WHERE thread_id = $1 AND id = $2 AND failures > 0")
                            .bind(thread.as_bytes())
                            .bind(&hook)
                            .execute(&mut *tx)
                            .await?;
                        continue;
                    };
                    // Failures in a row: those after the batch's last success, or all of
                    // them added to the count so far.
                    sqlx::query(if last_success.is_some() {
                        "UPDATE webhooks SET failures = $3 WHERE thread_id = $1 AND id = $2"
                    } else {
                        "UPDATE webhooks SET failures = failures + $3 WHERE thread_id = $1 AND id = $2"
                    })
                    .bind(thread.as_bytes())
                    .bind(&hook)
                    .bind(failed_after.len() as i64)
                    .execute(&mut *tx)
                    .await?;
                    let AttemptResult::Failed { disable_after, .. } = result else {
                        unreachable!("a failure")
                    };
                    let reason = format!(
                        "disabled after {disable_after} failed attempts in a row; the last: {}",
                        attempt
                            .error
                            .clone()
                            .or(attempt.status.map(|s| format!("HTTP {s}")))
                            .unwrap_or_default()
                    );
                    let disabled = sqlx::query(
                        "UPDATE webhooks SET disabled_at = $3, disabled_reason = $4 \
                         WHERE thread_id = $1 AND id = $2 AND failures >= $5 AND disabled_at IS NULL",
                    )
                    .bind(thread.as_bytes())
                    .bind(&hook)
                    .bind(attempt.at_ms)
                    .bind(reason)
                    .bind(*disable_after as i64)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if disabled > 0 {
                        // Its waiting deliveries wait for it to be enabled again.
                        sqlx::query(
                            "UPDATE deliveries SET state = 'paused' \
                             WHERE thread_id = $1 AND webhook_id = $2 AND state = 'pending'",
                        )
                        .bind(thread.as_bytes())
                        .bind(&hook)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                tx.commit().await?;
                Ok(())
            }
        }
    };
}

pub(crate) use impl_webhook_store;

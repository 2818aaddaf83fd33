//! `$SYS`: every interval, the shards' counters are summed and each shard
//! publishes the sum.

use std::sync::Arc;
use std::time::Duration;

use tern_broker::Stats;
use tokio::sync::oneshot;

use super::inbox::{ShardTx, ToShard};

/// Every `every`, sums the shards' counters and has each publish `$SYS`.
pub(super) async fn publish(txs: Arc<Vec<ShardTx>>, every: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tick.tick().await;
        let mut total = Stats::default();
        for tx in txs.iter() {
            let (reply, stats) = oneshot::channel();
            if tx.send(ToShard::Stats(reply)).is_err() {
                return;
            }
            if let Ok(s) = stats.await {
                total = total + s;
            }
        }
        for tx in txs.iter() {
            let _ = tx.send(ToShard::Sys(total));
        }
    }
}

//! The PostgreSQL backend: several instances on one database.

use crate::model::MerchantId;
use crate::store::{
    FeedRecord, FeedTx, ImportSummary, NewFeed, OrderRow, OrderView, Store, StoreError,
};

/// Stub until the backend is written.
pub struct PgStore;

impl PgStore {
    /// Opens the store.
    ///
    /// # Errors
    /// Not written yet.
    pub fn connect(url: &str) -> Result<PgStore, StoreError> {
        Err(StoreError::Other {
            detail: "not written yet".into(),
        })
    }
}

impl Store for PgStore {
    fn begin_feed(&mut self, _feed: &NewFeed) -> Result<Box<dyn FeedTx + '_>, StoreError> {
        unimplemented!()
    }
    fn feed_by_claim(&mut self, _claim_token: &str) -> Result<Option<FeedRecord>, StoreError> {
        unimplemented!()
    }
    fn feed_by_hash(
        &mut self,
        _merchant: &MerchantId,
        _content_hash: &str,
    ) -> Result<Option<FeedRecord>, StoreError> {
        unimplemented!()
    }
    fn recent_feeds(&mut self, _limit: u32) -> Result<Vec<FeedRecord>, StoreError> {
        unimplemented!()
    }
    fn import_orders(
        &mut self,
        _merchant: &MerchantId,
        _rows: &[OrderRow],
    ) -> Result<ImportSummary, StoreError> {
        unimplemented!()
    }
    fn orders(
        &mut self,
        _merchant: Option<&MerchantId>,
        _amazon_order_id: &str,
    ) -> Result<Vec<OrderView>, StoreError> {
        unimplemented!()
    }
}

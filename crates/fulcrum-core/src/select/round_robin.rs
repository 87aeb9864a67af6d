//! Placeholder: being written.
use super::Selector;
use crate::model::{Backend, BackendId};

pub struct RoundRobin { n: usize }
impl RoundRobin { pub fn new(backends: &[Backend]) -> Self { Self { n: backends.len() } } }
impl Selector for RoundRobin {
    fn pick(&self, _key: u64, eligible: &dyn Fn(BackendId) -> bool) -> Option<BackendId> {
        (0..self.n).map(BackendId).find(|&b| eligible(b))
    }
}

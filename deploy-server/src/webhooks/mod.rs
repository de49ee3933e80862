//! Webhooks: the `/v1/webhooks` endpoints ([`api`]) and the dispatcher that delivers the outbox ([`dispatch`]).

pub(crate) mod api;
pub(crate) mod dispatch;
pub(crate) mod guard;
pub(crate) mod sealed;

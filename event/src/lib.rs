//! The LLM call record (the contract between agent, collector and reports), the
//! LLM traffic rows (which connections to LLM hosts tokentap could read), the
//! price table and cost computation, and token estimation for streams that carry
//! no usage.
pub mod baseline;
pub mod compare;
pub mod compare_report;
pub mod cost;
pub mod facts;
pub mod opportunities;
pub mod record;
pub mod report;
pub mod roadmap;
pub mod summary;
pub mod tokens;
pub mod traffic;
pub mod wire;

pub use cost::{PriceError, PriceTable, Prices};
pub use record::{LlmCall, PromptFeatures, ToolCall, UsageSource};
pub use traffic::{LlmTraffic, Unread};

//! What each endpoint reports about its load: its model server's Prometheus `/metrics`.
//!
//! - [`parse`]: a tolerant, allocation-free reader of the text exposition format.
//! - [`flavor`]: the metric names of vLLM, SGLang and TGI, and `auto` detection; produces a
//!   [`ScrapedLoad`].
//! - [`scraper`]: the task that polls every endpoint of a pool and stores the result on it.

pub mod flavor;
pub mod parse;
pub mod scraper;

pub use flavor::{ExtractError, LoraInfo, PrefixCacheStats, ScrapedLoad, extract};
pub use scraper::{ScrapeClient, scrape_client, spawn_scraper};

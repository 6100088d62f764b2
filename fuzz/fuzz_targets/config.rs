//! Arbitrary topology files: parsing and validation must return a config or an error that
//! names where, never panic; a parsed config plans its topology without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodecloud::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Relative secret files resolve inside a directory that does not exist.
    let base = std::path::Path::new("/nonexistent-nodecloud-fuzz");
    if let Ok(cfg) = Config::parse(text, "fuzz.toml", base) {
        let plan = nodecloud::topology::plan(&cfg);
        let _ = nodecloud::topology::describe(&cfg, &plan);
    }
});

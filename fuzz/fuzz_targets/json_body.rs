//! A JSON body as `/batch` and `POST /e` read it: nothing panics, a batch
//! never yields more than its limit of events, and an event is accepted
//! only within the parameter limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trackplane::http::body::{self, MAX_BATCH_ITEMS};
use trackplane::http::Params;

const MAX_PARAMS: usize = 16;

fuzz_target!(|data: &[u8]| {
    let mut buffers = simd_json::Buffers::default();
    let mut params = Params::with_capacity(MAX_PARAMS);
    let mut batch = data.to_vec();
    if let Ok(items) = body::batch_items(&mut batch, &mut buffers) {
        assert!(items.len() <= MAX_BATCH_ITEMS);
        for item in &items {
            params.clear();
            if body::item_params(item, &mut params, MAX_PARAMS) {
                assert!(params.len() <= MAX_PARAMS);
            }
        }
    }
    params.clear();
    let mut object = data.to_vec();
    if body::object_params(&mut object, &mut params, MAX_PARAMS, &mut buffers) {
        assert!(params.len() <= MAX_PARAMS);
    }
});

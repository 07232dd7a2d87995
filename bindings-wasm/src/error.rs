//! Core errors as JavaScript `Error`s with a `code` (`MODEL_LOAD`, `TEMPLATE`,
//! `CONTEXT_LENGTH`, `INVALID_ARG`, `DEVICE`, `ABORTED`).

use wasm_bindgen::JsValue;

pub fn to_js(e: yangtuo::Error) -> JsValue {
    let err = js_sys::Error::new(&e.to_string());
    let _ = js_sys::Reflect::set(&err, &"code".into(), &e.code().into());
    match &e {
        yangtuo::Error::Cancelled => err.set_name("AbortError"),
        yangtuo::Error::Template { index, .. } => {
            let _ = js_sys::Reflect::set(&err, &"index".into(), &(*index as u32).into());
        }
        _ => {}
    }
    err.into()
}

pub fn arg(name: &'static str, msg: impl std::fmt::Display) -> JsValue {
    to_js(yangtuo::Error::arg(name, msg.to_string()))
}

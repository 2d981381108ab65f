//! Webhook Go templates (`customRequest.body` / `customResponse.body` with
//! `type: gotmpl`): authgate's compile step (`config::webhook::transform`:
//! the unclosed-action pre-check, then gtmpl's parser), then
//! `webhook::render_transform` on documents shaped like the ones the
//! webhook mode renders (the request, and the hook's answer).
//! Input: the template text.
//!
//! `render_transform` contains gtmpl's panics (`catch_unwind`), but
//! libfuzzer-sys aborts in its panic hook, before any unwinding. So on the
//! fuzzing thread the hook is replaced by one that lets the panic unwind: a
//! panic that authgate contains passes, one that escapes is caught by
//! `fuzz_target!`, which aborts (a crash). On any other thread (gtmpl lexes
//! on its own thread) a panic still aborts. `FUZZ_PRINT_PANICS=1` prints the
//! contained ones.
#![no_main]

use std::sync::{LazyLock, Once};

use authgate::config::webhook::transform;
use authgate::config::{Diagnostics, YamlPath};
use authgate::webhook::render_transform;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

static DOCS: LazyLock<[Value; 2]> = LazyLock::new(|| {
    [
        json!({
            "url": "/v1/graphql?op=q",
            "headers": {
                "authorization": "Bearer abc.def.ghi",
                "x-hasura-role": "user",
                "cookie": "a=1; b=2",
            },
            "body": {"query": "{ me { id } }", "variables": {"n": 1, "list": [1, 2, 3]}},
        }),
        json!({
            "headers": {"content-type": "application/json"},
            "body": {
                "user": {"id": 42, "roles": ["user", "editor"], "active": true},
                "X-Hasura-Role": "user",
                "ratio": 0.5,
                "none": null,
            },
        }),
    ]
});

fn no_env(_: &str) -> Option<String> {
    None
}

fn contain_panics_on_this_thread() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let fuzzing = std::thread::current().id();
        let print = std::env::var_os("FUZZ_PRINT_PANICS").is_some();
        let abort = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().id() != fuzzing {
                abort(info);
            } else if print {
                eprintln!("{info}");
            }
        }));
    });
}

fuzz_target!(|data: &[u8]| {
    contain_panics_on_this_thread();
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let spec = json!({"type": "gotmpl", "template": text});
    let mut d = Diagnostics::default();
    let Some(t) = transform(&mut d, &no_env, YamlPath::root().key("body"), &spec) else {
        assert!(
            !d.errors.is_empty(),
            "a refused template reports no problem"
        );
        return;
    };
    assert!(d.errors.is_empty());
    for doc in DOCS.iter() {
        let _ = render_transform(&t, doc);
    }
});

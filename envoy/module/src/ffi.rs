//! The Envoy dynamic-module ABI: the hooks Envoy calls (`envoy_dynamic_
//! module_on_*`) and the callbacks the module calls (`envoy_dynamic_module_
//! callback_*`), declared here from Envoy's C header
//! (`source/extensions/dynamic_modules/abi/abi.h`, ABI `v0.2.0`, Envoy
//! 1.40). Only what the filter uses is declared: a callback named here and
//! missing from Envoy would fail the module's load.
//!
//! This is the crate's only unsafe code. The invariants it relies on, from
//! the header's contract:
//! - (E1) Envoy's buffers and header arrays passed to a hook, or filled in
//!   by a callback, are valid for reads of their stated length until the
//!   hook returns; they are copied before then.
//! - (E2) A `filter_envoy_ptr` is valid from `on_http_filter_new` until
//!   `on_http_filter_destroy` returns, and only on the stream's worker
//!   thread; it is never sent to another thread.
//! - (E3) A `config_envoy_ptr` is valid until `on_http_filter_config_destroy`
//!   for the config returns; Envoy's stats behind it are thread-safe.
//! - (E4) The module pointers Envoy passes back are exactly those the
//!   module returned (`Box::into_raw`), and each destroy hook is called once,
//!   after every use.
//! - (E5) A scheduler may be committed from any thread and is deleted
//!   exactly once; a commit after its filter is gone is dropped by Envoy.
//! - (E6) `send_response` and `continue_decoding` may end the stream before
//!   they return, and Envoy then destroys the filter (`on_http_filter_destroy`
//!   runs inside the call): after either, the hook touches neither the
//!   module's filter object nor `filter_envoy_ptr` again.
//!
//! Every hook runs its body under `catch_unwind`: a panic must not unwind
//! into Envoy (undefined behaviour) nor abort it. A panic while deciding is
//! a denial (`internal_error`), elsewhere a no-op.

#![allow(unsafe_code)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use authgate_core::decision::{DenyReason, MetaValue};
use authgate_core::metrics::{BUILD_INFO, FAMILIES, Family, Kind};

use crate::filter::{DecisionStats, FilterConfig, Resume, Step, Stream, Waiting};
use crate::stats::{Mirror, SYNC_INTERVAL, Sink, Target};
use crate::{load, settings};

/// The ABI version this module is built against (Envoy 1.40).
const ABI_VERSION: &[u8] = b"v0.2.0\0";

/// `{ptr, length}`: `envoy_dynamic_module_type_{envoy,module}_buffer`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Buf {
    ptr: *const u8,
    len: usize,
}

impl Buf {
    const EMPTY: Buf = Buf {
        ptr: std::ptr::null(),
        len: 0,
    };

    fn of(s: &[u8]) -> Buf {
        Buf {
            ptr: s.as_ptr(),
            len: s.len(),
        }
    }

    /// Borrows Envoy's bytes (E1: only within the hook that received them).
    ///
    /// # Safety
    /// `self` must point to `len` readable bytes for the returned lifetime.
    unsafe fn bytes<'a>(self) -> &'a [u8] {
        if self.ptr.is_null() || self.len == 0 {
            return &[];
        }
        // SAFETY: the caller guarantees `ptr` is valid for `len` bytes (E1).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// `envoy_dynamic_module_type_{envoy,module}_http_header`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Header {
    key: Buf,
    value: Buf,
}

// envoy_dynamic_module_type_http_header_type
const REQUEST_HEADER: u32 = 0;
// envoy_dynamic_module_type_attribute_id
const SOURCE_ADDRESS: u32 = 24;
// envoy_dynamic_module_type_on_http_filter_request_headers_status
const HEADERS_CONTINUE: u32 = 0;
const HEADERS_STOP_ITERATION: u32 = 1;
const HEADERS_STOP_ALL_AND_WATERMARK: u32 = 4;
// body, trailers and local-reply statuses: Continue
const CONTINUE: u32 = 0;
// envoy_dynamic_module_type_log_level
const LOG_TRACE: u32 = 0;
const LOG_DEBUG: u32 = 1;
const LOG_INFO: u32 = 2;
const LOG_WARN: u32 = 3;
const LOG_ERROR: u32 = 4;
// envoy_dynamic_module_type_metrics_result
const METRICS_SUCCESS: u32 = 0;

type EnvoyFilter = *mut std::ffi::c_void;
type EnvoyConfig = *mut std::ffi::c_void;
type Scheduler = *mut std::ffi::c_void;

unsafe extern "C" {
    fn envoy_dynamic_module_callback_http_get_headers_size(f: EnvoyFilter, kind: u32) -> usize;
    fn envoy_dynamic_module_callback_http_get_headers(
        f: EnvoyFilter,
        kind: u32,
        out: *mut Header,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_header(
        f: EnvoyFilter,
        kind: u32,
        key: Buf,
        value: Buf,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_send_response(
        f: EnvoyFilter,
        status: u32,
        headers: *const Header,
        headers_len: usize,
        body: Buf,
        details: Buf,
    );
    fn envoy_dynamic_module_callback_http_filter_continue_decoding(f: EnvoyFilter);
    fn envoy_dynamic_module_callback_get_most_specific_route_config(
        f: EnvoyFilter,
    ) -> *const std::ffi::c_void;
    fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        f: EnvoyFilter,
        id: u32,
        out: *mut Buf,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_dynamic_metadata_string_batch(
        f: EnvoyFilter,
        namespace: Buf,
        entries: *const Header,
        entries_len: usize,
    );
    fn envoy_dynamic_module_callback_http_set_dynamic_metadata_bool(
        f: EnvoyFilter,
        namespace: Buf,
        key: Buf,
        value: bool,
    );
    fn envoy_dynamic_module_callback_http_filter_scheduler_new(f: EnvoyFilter) -> Scheduler;
    fn envoy_dynamic_module_callback_http_filter_scheduler_commit(s: Scheduler, event: u64);
    fn envoy_dynamic_module_callback_http_filter_scheduler_delete(s: Scheduler);
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(c: EnvoyConfig) -> Scheduler;
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(s: Scheduler, event: u64);
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(s: Scheduler);
    fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        c: EnvoyConfig,
        name: Buf,
        labels: *const Buf,
        labels_len: usize,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        c: EnvoyConfig,
        name: Buf,
        labels: *const Buf,
        labels_len: usize,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_define_histogram(
        c: EnvoyConfig,
        name: Buf,
        labels: *const Buf,
        labels_len: usize,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        c: EnvoyConfig,
        id: usize,
        labels: *const Buf,
        labels_len: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
        c: EnvoyConfig,
        id: usize,
        labels: *const Buf,
        labels_len: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_record_histogram_value(
        c: EnvoyConfig,
        id: usize,
        labels: *const Buf,
        labels_len: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_log(level: u32, message: Buf);
    fn envoy_dynamic_module_callback_log_enabled(level: u32) -> bool;
}

// ---------------------------------------------------------------------------
// Logging: the pipeline's `tracing` events go to Envoy's `dynamic_modules`
// logger, at their level.

fn envoy_level(level: &tracing::Level) -> u32 {
    match *level {
        tracing::Level::ERROR => LOG_ERROR,
        tracing::Level::WARN => LOG_WARN,
        tracing::Level::INFO => LOG_INFO,
        tracing::Level::DEBUG => LOG_DEBUG,
        tracing::Level::TRACE => LOG_TRACE,
    }
}

fn log(level: u32, message: &str) {
    // SAFETY: the message buffer is valid for the call; Envoy copies it.
    unsafe { envoy_dynamic_module_callback_log(level, Buf::of(message.as_bytes())) }
}

fn log_enabled(level: u32) -> bool {
    // SAFETY: a plain query of Envoy's logger level.
    unsafe { envoy_dynamic_module_callback_log_enabled(level) }
}

/// One formatted event, handed to Envoy's logger when dropped.
struct EnvoyLine {
    level: u32,
    buf: Vec<u8>,
}

impl std::io::Write for EnvoyLine {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for EnvoyLine {
    fn drop(&mut self) {
        while self.buf.last() == Some(&b'\n') {
            self.buf.pop();
        }
        if !self.buf.is_empty() {
            log(self.level, &String::from_utf8_lossy(&self.buf));
        }
    }
}

struct EnvoyLog;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for EnvoyLog {
    type Writer = EnvoyLine;
    fn make_writer(&'a self) -> EnvoyLine {
        EnvoyLine {
            level: LOG_INFO,
            buf: Vec::new(),
        }
    }
    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> EnvoyLine {
        EnvoyLine {
            level: envoy_level(meta.level()),
            buf: Vec::new(),
        }
    }
}

fn install_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    let filter = tracing_subscriber::filter::filter_fn(|meta| {
        meta.target().starts_with("authgate") && log_enabled(envoy_level(meta.level()))
    });
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .without_time()
        .with_level(false)
        .with_target(false)
        .with_writer(EnvoyLog);
    let subscriber = tracing_subscriber::registry().with(fmt.with_filter(filter));
    // Another copy of the module in the process may have set it: keep that.
    let _ = tracing::subscriber::set_global_default(subscriber);
}

use tracing_subscriber::Layer as _;

// ---------------------------------------------------------------------------
// Program and filter config.

/// Called by Envoy once, on its main thread, after loading the module: the
/// ABI version, or NULL to refuse the load.
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const u8 {
    match catch_unwind(install_logging) {
        Ok(()) => ABI_VERSION.as_ptr(),
        // NULL refuses the module: a module that cannot log cannot report.
        Err(_) => std::ptr::null(),
    }
}

/// What the module hands Envoy as a filter config.
struct ModuleConfig {
    filter: FilterConfig,
    stats: Arc<EnvoyStats>,
    /// The config scheduler that brings the sync to Envoy's main thread,
    /// `None` once the config is being destroyed (E5: deleted once).
    sync_scheduler: Arc<Mutex<Option<SchedulerPtr>>>,
    sync_task: Option<tokio::task::JoinHandle<()>>,
    mirror: Mutex<Mirror>,
}

/// A config pointer used from the module's threads (E3).
#[derive(Clone, Copy)]
struct ConfigPtr(EnvoyConfig);
// SAFETY: E3: the stats behind it are thread-safe and it outlives its users
// (the config's destroy stops the sync before freeing anything).
unsafe impl Send for ConfigPtr {}
unsafe impl Sync for ConfigPtr {}

/// A scheduler pointer, committed from the module's runtime (E5).
struct SchedulerPtr(Scheduler);
// SAFETY: E5: commit and delete may be called from any thread.
unsafe impl Send for SchedulerPtr {}

/// Envoy stat ids for the pipeline's families (docs/envoy-module.md#metrics).
struct EnvoyStats {
    config: ConfigPtr,
    /// By [`FAMILIES`] index: the id, or 0 when Envoy refused it.
    ids: Vec<usize>,
    build_info: usize,
    /// `authgate_check_duration_microseconds`.
    duration: usize,
}

/// Stat names: the pipeline's, except the decision time, which Envoy keeps
/// in integer histograms: microseconds instead of seconds. It has no
/// `frontend` label (every sample is the module's): Envoy resolves label
/// values on every record, which cost a few µs per request
/// (docs/envoy-module.md#metrics).
const DURATION_NAME: &str = "authgate_check_duration_microseconds";

impl EnvoyStats {
    /// Defines every family; only possible inside `config_new`.
    fn define(config: EnvoyConfig) -> Self {
        let define = |f: &Family| -> usize {
            let (name, labels): (_, &[&str]) = if f.kind == Kind::Histogram {
                (DURATION_NAME, &[])
            } else {
                (f.name, f.labels)
            };
            let labels: Vec<Buf> = labels.iter().map(|l| Buf::of(l.as_bytes())).collect();
            let mut id = 0usize;
            type Define =
                unsafe extern "C" fn(EnvoyConfig, Buf, *const Buf, usize, *mut usize) -> u32;
            let call: Define = match f.kind {
                Kind::Counter => envoy_dynamic_module_callback_http_filter_config_define_counter,
                Kind::Gauge => envoy_dynamic_module_callback_http_filter_config_define_gauge,
                Kind::Histogram => {
                    envoy_dynamic_module_callback_http_filter_config_define_histogram
                }
            };
            // SAFETY: E3 (config_new's config pointer); the name, label and
            // id buffers are valid for the call and Envoy copies the names.
            let r = unsafe {
                call(
                    config,
                    Buf::of(name.as_bytes()),
                    labels.as_ptr(),
                    labels.len(),
                    &mut id,
                )
            };
            if r != METRICS_SUCCESS {
                log(
                    LOG_WARN,
                    &format!("authgate: Envoy refused the stat {name} ({r})"),
                );
                return 0;
            }
            id
        };
        let ids: Vec<usize> = FAMILIES.iter().map(define).collect();
        let duration = FAMILIES
            .iter()
            .position(|f| f.kind == Kind::Histogram)
            .map_or(0, |i| ids[i]);
        EnvoyStats {
            config: ConfigPtr(config),
            build_info: define(&BUILD_INFO),
            ids,
            duration,
        }
    }

    fn id(&self, target: Target) -> usize {
        match target {
            Target::Family(i) => self.ids.get(i).copied().unwrap_or(0),
            Target::BuildInfo => self.build_info,
        }
    }
}

/// Label values as Envoy buffers, on the stack for up to four labels.
fn with_labels<R>(labels: &[&str], f: impl FnOnce(&[Buf]) -> R) -> R {
    let mut bufs = [Buf::EMPTY; 4];
    if labels.len() <= bufs.len() {
        for (b, l) in bufs.iter_mut().zip(labels) {
            *b = Buf::of(l.as_bytes());
        }
        f(&bufs[..labels.len()])
    } else {
        let v: Vec<Buf> = labels.iter().map(|l| Buf::of(l.as_bytes())).collect();
        f(&v)
    }
}

/// `http_filter_config_increment_counter` and `_set_gauge`.
type Update = unsafe extern "C" fn(EnvoyConfig, usize, *const Buf, usize, u64) -> u32;

impl EnvoyStats {
    fn update(&self, call: Update, target: Target, labels: &[&str], value: u64) {
        let id = self.id(target);
        if id == 0 {
            return;
        }
        with_labels(labels, |l| {
            // SAFETY: E3; the label buffers are valid for the call. A
            // family without labels has an empty slice, as defined.
            unsafe { call(self.config.0, id, l.as_ptr(), l.len(), value) }
        });
    }
}

impl Sink for &EnvoyStats {
    fn add(&mut self, target: Target, labels: &[&str], n: u64) {
        self.update(
            envoy_dynamic_module_callback_http_filter_config_increment_counter,
            target,
            labels,
            n,
        );
    }

    fn set(&mut self, target: Target, labels: &[&str], value: u64) {
        self.update(
            envoy_dynamic_module_callback_http_filter_config_set_gauge,
            target,
            labels,
            value,
        );
    }
}

impl DecisionStats for EnvoyStats {
    fn decided(&self, elapsed: Duration) {
        if self.duration == 0 {
            return;
        }
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let no_labels: [Buf; 0] = [];
        // SAFETY: E3 (the config outlives its streams); Envoy's histograms
        // are thread-safe; no labels, as defined.
        unsafe {
            envoy_dynamic_module_callback_http_filter_config_record_histogram_value(
                self.config.0,
                self.duration,
                no_labels.as_ptr(),
                0,
                micros,
            );
        }
    }
}

/// # Safety
/// Called by Envoy on its main thread; `name` and `config` are valid for
/// the call (E1).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy_ptr: EnvoyConfig,
    name: Buf,
    config: Buf,
) -> *const std::ffi::c_void {
    // SAFETY: E1.
    let (name, config) = unsafe { (name.bytes(), config.bytes()) };
    let made = catch_unwind(AssertUnwindSafe(|| {
        new_config(config_envoy_ptr, name, config)
    }));
    match made {
        Ok(Ok(c)) => Box::into_raw(Box::new(c)) as *const std::ffi::c_void,
        Ok(Err(lines)) => {
            for line in lines {
                log(LOG_ERROR, &line);
            }
            std::ptr::null()
        }
        Err(_) => {
            log(LOG_ERROR, "authgate: loading the filter config panicked");
            std::ptr::null()
        }
    }
}

fn new_config(envoy: EnvoyConfig, name: &[u8], config: &[u8]) -> Result<ModuleConfig, Vec<String>> {
    if name != b"authgate" {
        return Err(vec![format!(
            "authgate: unknown filter_name `{}` (expected authgate)",
            String::from_utf8_lossy(name).escape_debug()
        )]);
    }
    let loaded = settings::load(config).map_err(|e| e.0)?;
    for w in &loaded.warnings {
        log(LOG_WARN, w);
    }
    let stats = Arc::new(EnvoyStats::define(envoy));
    let filter = load::build(loaded.config, Box::new(stats.clone()), loaded.options)
        .map_err(|e| vec![format!("{}: error: {e}", settings::INLINE_NAME)])?;
    // The counters and gauges reach Envoy from its main thread, once a
    // second: the runtime commits the config scheduler, Envoy calls
    // `on_http_filter_config_scheduled`.
    // SAFETY: E3.
    let scheduler =
        unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_new(envoy) };
    let sync_scheduler = Arc::new(Mutex::new(
        (!scheduler.is_null()).then_some(SchedulerPtr(scheduler)),
    ));
    let ticks = sync_scheduler.clone();
    let sync_task = load::runtime().ok().map(|rt| {
        rt.spawn(async move {
            let mut every = tokio::time::interval(SYNC_INTERVAL);
            loop {
                every.tick().await;
                let guard = ticks.lock().unwrap_or_else(|p| p.into_inner());
                let Some(s) = guard.as_ref() else { break };
                // SAFETY: E5; the lock keeps the scheduler from being
                // deleted during the commit.
                unsafe {
                    envoy_dynamic_module_callback_http_filter_config_scheduler_commit(s.0, 0)
                };
            }
        })
    });
    Ok(ModuleConfig {
        filter,
        stats,
        sync_scheduler,
        sync_task,
        mirror: Mutex::new(Mirror::default()),
    })
}

/// # Safety
/// `config` is a pointer `config_new` returned (E4), not used after this.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(
    config: *const std::ffi::c_void,
) {
    if config.is_null() {
        return;
    }
    // SAFETY: E4: the Box this module made, destroyed once.
    let config = unsafe { Box::from_raw(config as *mut ModuleConfig) };
    let _ = catch_unwind(AssertUnwindSafe(move || {
        // The last second's counts, before the stats go (main thread, E3).
        let mut mirror = config.mirror.lock().unwrap_or_else(|p| p.into_inner());
        let mut sink: &EnvoyStats = &config.stats;
        mirror.sync(config.filter.metrics(), &mut sink);
        drop(mirror);
        let scheduler = config
            .sync_scheduler
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(s) = scheduler {
            // SAFETY: E5: taken under the lock, so no commit is running
            // and none will start; deleted once.
            unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_delete(s.0) };
        }
        if let Some(task) = &config.sync_task {
            task.abort();
        }
        drop(config);
    }));
}

/// # Safety
/// Called on Envoy's main thread with a pointer `config_new` returned (E4).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    _config_envoy_ptr: EnvoyConfig,
    config: *const std::ffi::c_void,
    _event: u64,
) {
    if config.is_null() {
        return;
    }
    // SAFETY: E4: valid until config_destroy, which runs on this thread.
    let config = unsafe { &*(config as *const ModuleConfig) };
    let _ = catch_unwind(AssertUnwindSafe(|| {
        let mut mirror = config.mirror.lock().unwrap_or_else(|p| p.into_inner());
        let mut sink: &EnvoyStats = &config.stats;
        mirror.sync(config.filter.metrics(), &mut sink);
    }));
}

// ---------------------------------------------------------------------------
// Per-route config.

/// # Safety
/// Called on Envoy's main thread; the buffers are valid for the call (E1).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new(
    name: Buf,
    config: Buf,
) -> *const std::ffi::c_void {
    // SAFETY: E1.
    let (name, config) = unsafe { (name.bytes(), config.bytes()) };
    let made = catch_unwind(|| {
        if name != b"authgate" {
            return Err(format!(
                "unknown per-route filter_name `{}` (expected authgate)",
                String::from_utf8_lossy(name).escape_debug()
            ));
        }
        settings::route(config)
    });
    match made {
        Ok(Ok(context)) => Box::into_raw(Box::new(RouteConfig {
            magic: ROUTE_MAGIC,
            context,
        })) as *const std::ffi::c_void,
        Ok(Err(e)) => {
            log(LOG_ERROR, &format!("authgate: {e}"));
            std::ptr::null()
        }
        Err(_) => std::ptr::null(),
    }
}

/// What the module hands Envoy as a per-route config. Envoy returns the
/// route's most specific per-filter config for the filter's name whichever
/// module made it: the tag tells this module's own from another's.
#[repr(C)]
struct RouteConfig {
    magic: u64,
    context: HashMap<String, String>,
}

/// "authgate" in ASCII.
const ROUTE_MAGIC: u64 = 0x6175_7468_6761_7465;

/// # Safety
/// `config` is a pointer `per_route_config_new` returned (E4).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_destroy(
    config: *const std::ffi::c_void,
) {
    if !config.is_null() {
        // SAFETY: E4: the Box this module made, destroyed once.
        drop(unsafe { Box::from_raw(config as *mut RouteConfig) });
    }
}

// ---------------------------------------------------------------------------
// Streams.

/// What the module hands Envoy per stream.
struct ModuleFilter {
    config: *const ModuleConfig,
    waiting: Option<Waiting>,
}

/// # Safety
/// `config` is a pointer `config_new` returned (E4); it outlives the stream.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: *const std::ffi::c_void,
    _filter_envoy_ptr: EnvoyFilter,
) -> *const std::ffi::c_void {
    // Allocation failure aborts, as everywhere in Rust; nothing here panics.
    Box::into_raw(Box::new(ModuleFilter {
        config: config as *const ModuleConfig,
        waiting: None,
    })) as *const std::ffi::c_void
}

/// # Safety
/// `filter` is a pointer `filter_new` returned (E4), not used after this.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_destroy(
    filter: *const std::ffi::c_void,
) {
    if !filter.is_null() {
        // SAFETY: E4. Dropping a pending `Waiting` stops its task.
        let f = unsafe { Box::from_raw(filter as *mut ModuleFilter) };
        let _ = catch_unwind(AssertUnwindSafe(move || drop(f)));
    }
}

/// The stream as [`Stream`] sees it (E2: used on the worker only, within a
/// hook).
struct EnvoyStream {
    ptr: EnvoyFilter,
    /// Set once `send_response` ran: the stream may be gone (E6).
    replied: bool,
}

impl EnvoyStream {
    fn new(ptr: EnvoyFilter) -> Self {
        EnvoyStream {
            ptr,
            replied: false,
        }
    }
}

thread_local! {
    /// Header views of the current hook, reused across requests (E1: the
    /// pointers are never read after the hook).
    static HEADERS: RefCell<Vec<Header>> = const { RefCell::new(Vec::new()) };
}

/// Dynamic metadata namespace of the module's allows.
const METADATA_NAMESPACE: &[u8] = b"authgate";

impl Stream for EnvoyStream {
    fn for_each_header(&self, f: &mut dyn FnMut(&[u8], &[u8])) {
        HEADERS.with(|cell| {
            // Never re-entered; if it were, a request without headers must
            // not be decided: the panic becomes a denial.
            let mut headers = cell
                .try_borrow_mut()
                .expect("request headers are read once at a time");
            // SAFETY: E2.
            let n = unsafe {
                envoy_dynamic_module_callback_http_get_headers_size(self.ptr, REQUEST_HEADER)
            };
            headers.clear();
            headers.resize(
                n,
                Header {
                    key: Buf::EMPTY,
                    value: Buf::EMPTY,
                },
            );
            // SAFETY: E2; `headers` has room for the `n` entries Envoy writes.
            let ok = unsafe {
                envoy_dynamic_module_callback_http_get_headers(
                    self.ptr,
                    REQUEST_HEADER,
                    headers.as_mut_ptr(),
                )
            };
            if ok {
                for h in headers.iter() {
                    // SAFETY: E1: Envoy's header map, unchanged during the hook.
                    let (k, v) = unsafe { (h.key.bytes(), h.value.bytes()) };
                    f(k, v);
                }
            }
            headers.clear();
        });
    }

    fn source_ip(&self) -> Option<IpAddr> {
        let mut out = Buf::EMPTY;
        // SAFETY: E2; `out` is written by Envoy.
        let ok = unsafe {
            envoy_dynamic_module_callback_http_filter_get_attribute_string(
                self.ptr,
                SOURCE_ADDRESS,
                &mut out,
            )
        };
        if !ok {
            return None;
        }
        // SAFETY: E1.
        let text = std::str::from_utf8(unsafe { out.bytes() }).ok()?;
        // "ip:port" ("[v6]:port"); a pipe or an internal address has none.
        text.parse::<SocketAddr>()
            .map(|a| a.ip())
            .or_else(|_| text.parse::<IpAddr>())
            .ok()
    }

    fn route(&self) -> Option<&HashMap<String, String>> {
        // SAFETY: E2; the pointer is one a per_route_config_new returned
        // (E4), alive while the route config is, which outlives the stream.
        // This module's per-route configs start with the tag (`repr(C)`);
        // another module's config under the same filter name is a mistake
        // in Envoy's config, refused below after reading the first word.
        let route = unsafe {
            let p = envoy_dynamic_module_callback_get_most_specific_route_config(self.ptr);
            (p as *const RouteConfig).as_ref()?
        };
        // Not ours: the panic becomes a denial (fail closed).
        assert!(
            route.magic == ROUTE_MAGIC,
            "the route's per-filter config `authgate` was not made by this module"
        );
        Some(&route.context)
    }

    fn set_header(&mut self, name: &str, value: &str) -> bool {
        // Envoy removes a header set to an empty value: an empty session
        // value is sent as no header (docs/envoy-module.md#differences).
        // SAFETY: E2; the buffers are valid for the call; Envoy copies them.
        unsafe {
            envoy_dynamic_module_callback_http_set_header(
                self.ptr,
                REQUEST_HEADER,
                Buf::of(name.as_bytes()),
                Buf::of(value.as_bytes()),
            )
        }
    }

    fn remove_header(&mut self, name: &str) -> bool {
        // SAFETY: as in `set_header`; a null value removes every value.
        unsafe {
            envoy_dynamic_module_callback_http_set_header(
                self.ptr,
                REQUEST_HEADER,
                Buf::of(name.as_bytes()),
                Buf::EMPTY,
            )
        }
    }

    fn set_metadata(&mut self, fields: &[(&'static str, Option<MetaValue<'_>>)]) {
        let ns = Buf::of(METADATA_NAMESPACE);
        // The text fields in one call (one merge into the stream's metadata
        // instead of one per field); key-value pairs have the header layout.
        let mut text = [Header {
            key: Buf::EMPTY,
            value: Buf::EMPTY,
        }; 5];
        let mut n = 0;
        for (key, value) in fields {
            match value {
                Some(MetaValue::Text(s)) if n < text.len() => {
                    text[n] = Header {
                        key: Buf::of(key.as_bytes()),
                        value: Buf::of(s.as_bytes()),
                    };
                    n += 1;
                }
                Some(MetaValue::Bool(b)) => {
                    // SAFETY: E2; the buffers are valid for the call; Envoy
                    // copies them.
                    unsafe {
                        envoy_dynamic_module_callback_http_set_dynamic_metadata_bool(
                            self.ptr,
                            ns,
                            Buf::of(key.as_bytes()),
                            *b,
                        )
                    }
                }
                _ => {}
            }
        }
        if n > 0 {
            // SAFETY: E2; `text[..n]` and the buffers it points to are valid
            // for the call; Envoy copies them.
            unsafe {
                envoy_dynamic_module_callback_http_set_dynamic_metadata_string_batch(
                    self.ptr,
                    ns,
                    text.as_ptr(),
                    n,
                )
            }
        }
    }

    fn set_metadata_strings(&mut self, fields: &[(&str, &str)]) {
        let list: Vec<Header> = fields
            .iter()
            .map(|(k, v)| Header {
                key: Buf::of(k.as_bytes()),
                value: Buf::of(v.as_bytes()),
            })
            .collect();
        // SAFETY: E2; `list` and the buffers it points to (borrowed from
        // `fields`) are valid for the call; Envoy copies them.
        unsafe {
            envoy_dynamic_module_callback_http_set_dynamic_metadata_string_batch(
                self.ptr,
                Buf::of(METADATA_NAMESPACE),
                list.as_ptr(),
                list.len(),
            )
        }
    }

    fn send_response(&mut self, status: u16, headers: &[(&str, &str)], body: &str) {
        let mut list = [Header {
            key: Buf::EMPTY,
            value: Buf::EMPTY,
        }; 2];
        let n = headers.len().min(list.len());
        for (slot, (k, v)) in list.iter_mut().zip(headers) {
            *slot = Header {
                key: Buf::of(k.as_bytes()),
                value: Buf::of(v.as_bytes()),
            };
        }
        if self.replied {
            return;
        }
        self.replied = true;
        // SAFETY: E2; the header array and buffers are valid for the call.
        unsafe {
            envoy_dynamic_module_callback_http_send_response(
                self.ptr,
                u32::from(status),
                list.as_ptr(),
                n,
                Buf::of(body.as_bytes()),
                Buf::of(DETAILS),
            );
        }
    }
}

/// `%RESPONSE_CODE_DETAILS%` of the module's denials.
const DETAILS: &[u8] = b"authgate_denied";

/// Resumes a stream from the module's runtime (E5).
struct EnvoyResume(SchedulerPtr);

impl Resume for EnvoyResume {
    fn resume(self: Box<Self>) {
        drop(self);
    }
}

impl Drop for EnvoyResume {
    fn drop(&mut self) {
        // Committed and deleted together, once (E5): a resume that is
        // dropped unused (the task aborted) commits too, and the stream, if
        // still there, finds no decision and denies.
        // SAFETY: E5.
        unsafe {
            envoy_dynamic_module_callback_http_filter_scheduler_commit(self.0.0, 0);
            envoy_dynamic_module_callback_http_filter_scheduler_delete(self.0.0);
        }
    }
}

/// The config of a stream's filter (E4: `filter` is what filter_new
/// returned; its config outlives it).
fn config_of<'a>(filter: *const std::ffi::c_void) -> Option<&'a ModuleConfig> {
    // SAFETY: E4; only shared references to the config are made.
    unsafe { (filter as *const ModuleFilter).as_ref()?.config.as_ref() }
}

/// The filter's own state, for the moment of a hook when no Envoy call that
/// could destroy it (E6) runs.
///
/// # Safety
/// `filter` is what filter_new returned and its stream has not ended; no
/// other reference to it is live (E2: one worker, one hook at a time).
unsafe fn state_of<'a>(filter: *const std::ffi::c_void) -> Option<&'a mut ModuleFilter> {
    // SAFETY: as the caller guarantees.
    unsafe { (filter as *mut ModuleFilter).as_mut() }
}

/// A denial for a request the module failed to decide (a panic, a config
/// missing): fail closed. Nothing if a reply went out already (E6).
fn deny_internal(stream: &mut EnvoyStream) {
    let r = DenyReason::InternalError;
    stream.send_response(
        r.http_status(),
        &[("content-type", "application/json")],
        r.body(),
    );
}

/// # Safety
/// Called on the stream's worker with the pointers of this stream (E2, E4).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter_envoy_ptr: EnvoyFilter,
    filter: *const std::ffi::c_void,
    _end_of_stream: bool,
) -> u32 {
    let mut stream = EnvoyStream::new(filter_envoy_ptr);
    let Some(config) = config_of(filter) else {
        deny_internal(&mut stream);
        return HEADERS_STOP_ITERATION;
    };
    let decided = catch_unwind(AssertUnwindSafe(|| {
        config.filter.on_request_headers(&mut stream, || {
            // SAFETY: E2.
            let s = unsafe {
                envoy_dynamic_module_callback_http_filter_scheduler_new(filter_envoy_ptr)
            };
            (!s.is_null()).then(|| Box::new(EnvoyResume(SchedulerPtr(s))) as Box<dyn Resume>)
        })
    }));
    match decided {
        Ok((Step::Continue, _)) => HEADERS_CONTINUE,
        Ok((Step::Replied, _)) => HEADERS_STOP_ITERATION,
        Ok((Step::Wait, waiting)) => {
            // SAFETY: no reply was sent (Wait), so the stream is alive (E6).
            match unsafe { state_of(filter) } {
                Some(state) => {
                    state.waiting = waiting;
                    HEADERS_STOP_ALL_AND_WATERMARK
                }
                None => HEADERS_STOP_ITERATION,
            }
        }
        Err(_) => {
            log(LOG_ERROR, "authgate: deciding a request panicked; denied");
            deny_internal(&mut stream);
            HEADERS_STOP_ITERATION
        }
    }
}

/// # Safety
/// Called on the stream's worker with the pointers of this stream (E2, E4).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    filter_envoy_ptr: EnvoyFilter,
    filter: *const std::ffi::c_void,
    _event: u64,
) {
    let Some(config) = config_of(filter) else {
        return;
    };
    // SAFETY: the stream is alive (Envoy calls this hook only then), and
    // the reference ends here, before any Envoy call.
    let Some(waiting) = (unsafe { state_of(filter) }).and_then(|s| s.waiting.take()) else {
        return;
    };
    let mut stream = EnvoyStream::new(filter_envoy_ptr);
    let step = catch_unwind(AssertUnwindSafe(|| {
        config.filter.resumed(waiting, &mut stream)
    }));
    match step {
        Ok(Step::Continue) => {
            // SAFETY: E2; the stream stopped in request_headers. Last use
            // (E6).
            unsafe { envoy_dynamic_module_callback_http_filter_continue_decoding(filter_envoy_ptr) }
        }
        Ok(Step::Replied | Step::Wait) => {}
        Err(_) => {
            log(LOG_ERROR, "authgate: resuming a request panicked; denied");
            deny_internal(&mut stream);
        }
    }
}

// Hooks the filter has no use for: Envoy requires them all.

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    _f: EnvoyFilter,
    _m: *const std::ffi::c_void,
    _end_of_stream: bool,
) -> u32 {
    CONTINUE
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    _f: EnvoyFilter,
    _m: *const std::ffi::c_void,
) -> u32 {
    CONTINUE
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    _f: EnvoyFilter,
    _m: *const std::ffi::c_void,
    _end_of_stream: bool,
) -> u32 {
    CONTINUE
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    _f: EnvoyFilter,
    _m: *const std::ffi::c_void,
    _end_of_stream: bool,
) -> u32 {
    CONTINUE
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    _f: EnvoyFilter,
    _m: *const std::ffi::c_void,
) -> u32 {
    CONTINUE
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    _f: EnvoyFilter,
    _m: *const std::ffi::c_void,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _f: EnvoyFilter,
    _m: *const std::ffi::c_void,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _f: EnvoyFilter,
    _m: *const std::ffi::c_void,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    _f: EnvoyFilter,
    _m: *const std::ffi::c_void,
    _callout_id: u64,
    _result: u32,
    _headers: *const Header,
    _headers_len: usize,
    _body: *const Buf,
    _body_len: usize,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _f: EnvoyFilter,
    _m: *const std::ffi::c_void,
    _stream_id: u64,
    _headers: *const Header,
    _headers_len: usize,
    _end_stream: bool,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _f: EnvoyFilter,
    _m: *const std::ffi::c_void,
    _stream_id: u64,
    _data: *const Buf,
    _data_len: usize,
    _end_stream: bool,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _f: EnvoyFilter,
    _m: *const std::ffi::c_void,
    _stream_id: u64,
    _trailers: *const Header,
    _trailers_len: usize,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _f: EnvoyFilter,
    _m: *const std::ffi::c_void,
    _stream_id: u64,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _f: EnvoyFilter,
    _m: *const std::ffi::c_void,
    _stream_id: u64,
    _reason: u32,
) {
}

//! What a filter gets when it is built, and what it gives back: the `BuildFilter` trait every
//! filter implements (its `type:` name, its config type, its constructor, what the core needs to
//! know about an entry), the `BuildContext` handed to that constructor (the clusters it may
//! name, settings from the command line, the shared-resource store, admin endpoint
//! registration), and `Resources`, the store of state that outlives a reload.
//!
//! A reload builds a whole new config version with a `BuildContext` that sees the serving
//! version's `Resources`: `shared(key, init)` hands back the same `Arc` when the previous version
//! held that key (a limiter's buckets, a JWKS cache, a canary's weight survive the reload) and
//! builds a new one otherwise. The new version keeps only what it asked for, so a resource no
//! filter uses any more is dropped with the last version that used it. Nothing is shared with
//! a version that failed to build.

use std::any::{Any, TypeId};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::admin::AdminEndpoint;
use crate::filter::Filter;

/// A filter the registry can build from its config entry.
pub trait BuildFilter: Filter + Sized + 'static {
    /// The config's `type:` value.
    const TYPE: &'static str;
    /// The rest of the entry, read straight from the file (strict: unknown keys are errors).
    type Config: DeserializeOwned + Serialize + Clone + Debug + Send + Sync + 'static;

    /// Build the filter; the error says what is wrong (the caller adds where).
    fn build(cfg: &Self::Config, bctx: &mut BuildContext) -> Result<Self, String>;

    /// Whether this entry sends requests to clusters, which makes its chain a *routing chain*
    /// (the chains `--mirror` and shadow capture are added to).
    fn routes_upstream(_cfg: &Self::Config) -> bool {
        false
    }

    /// Register this filter's metrics (so `/metrics` lists them before first use).
    fn register_metrics() {}

    /// Directories whose files the entry reads when it is built: a change there reloads the
    /// config like an edit of the file does.
    fn watched_dirs(_cfg: &Self::Config) -> Vec<PathBuf> {
        Vec::new()
    }
}

/// The `BuildContext::settings` key set by `--check`: the version is built to be validated,
/// never served, so filters check what they would open (files, stores) without creating it.
pub const CHECK_ONLY_SETTING: &str = "config.check_only";

/// Everything a filter may use while it is built.
pub struct BuildContext<'a> {
    /// The clusters the config declares (empty: not checked, e.g. in benchmarks).
    pub clusters: &'a [String],
    /// Settings given on the command line that filters read as defaults, by `filter.key`
    /// (e.g. `opa.endpoint` from `--opa-endpoint`).
    pub settings: &'a BTreeMap<String, String>,
    previous: Option<&'a Resources>,
    next: Resources,
    locals: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
    admin: Vec<Arc<dyn AdminEndpoint>>,
    on_activate: Vec<Activation>,
}

/// Work to do when a built version starts serving.
pub type Activation = Box<dyn Fn() + Send + Sync>;

/// What building a version produced besides its filters.
pub struct Built {
    pub resources: Resources,
    pub admin_endpoints: Vec<Arc<dyn AdminEndpoint>>,
    /// Run once the version serves (see `BuildContext::on_activate`).
    pub on_activate: Vec<Activation>,
}

impl<'a> BuildContext<'a> {
    /// A context for building a new config version; `previous` is the serving version's store.
    pub fn new(
        clusters: &'a [String],
        settings: &'a BTreeMap<String, String>,
        previous: Option<&'a Resources>,
    ) -> Self {
        BuildContext {
            clusters,
            settings,
            previous,
            next: Resources::default(),
            locals: HashMap::new(),
            admin: Vec::new(),
            on_activate: Vec::new(),
        }
    }

    /// Built by `--check`: validate, create nothing (see `CHECK_ONLY_SETTING`).
    pub fn check_only(&self) -> bool {
        self.settings.contains_key(CHECK_ONLY_SETTING)
    }

    /// A context for a filter built on its own (benchmarks, unit tests): no clusters to check,
    /// no command-line settings, no previous version.
    pub fn standalone() -> BuildContext<'static> {
        static NO_SETTINGS: BTreeMap<String, String> = BTreeMap::new();
        BuildContext::new(&[], &NO_SETTINGS, None)
    }

    /// The resource of type `T` known by `key`: the one this version already holds, else the
    /// previous version's, else a new one from `init`. Key it by everything that makes two
    /// resources different (a limiter by its name and rate, a key cache by its URL), so a reload
    /// that changes them starts afresh and one that does not keeps the state.
    pub fn shared<T: Send + Sync + 'static>(
        &mut self,
        key: &str,
        init: impl FnOnce() -> Result<T, String>,
    ) -> Result<Arc<T>, String> {
        let id = (TypeId::of::<T>(), key.to_string());
        if let Some(found) = self.next.get::<T>(&id) {
            return Ok(found);
        }
        let found = match self.previous.and_then(|p| p.get::<T>(&id)) {
            Some(kept) => kept,
            None => Arc::new(init()?),
        };
        self.next.entries.insert(id, found.clone());
        Ok(found)
    }

    /// This version's one value of type `T` (created empty on first use, never carried to the
    /// next version): e.g. the board of every canary, which the canaries fill as they are built.
    pub fn local<T: Default + Send + Sync + 'static>(&mut self) -> Arc<T> {
        let any = self
            .locals
            .entry(TypeId::of::<T>())
            .or_insert_with(|| Arc::new(T::default()))
            .clone();
        any.downcast::<T>()
            .unwrap_or_else(|_| unreachable!("locals are keyed by their own TypeId"))
    }

    /// Put this version's one value of type `T` in place (see `local`).
    pub fn set_local<T: Send + Sync + 'static>(&mut self, value: Arc<T>) {
        self.locals.insert(TypeId::of::<T>(), value);
    }

    /// This version's value of type `T`, if something put one in place.
    pub fn get_local<T: Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        self.locals
            .get(&TypeId::of::<T>())
            .and_then(|a| a.clone().downcast::<T>().ok())
    }

    /// Serve an admin endpoint while this version serves. Registering the same path twice
    /// keeps the first (filters of one kind share one endpoint).
    pub fn register_admin(&mut self, endpoint: Arc<dyn AdminEndpoint>) {
        if !self.admin.iter().any(|e| e.path() == endpoint.path()) {
            self.admin.push(endpoint);
        }
    }

    /// Run `f` when this version starts serving (after the swap that makes it current; never
    /// for a version that failed to build): e.g. tell a shared worker the settings it now runs
    /// with.
    pub fn on_activate(&mut self, f: impl Fn() + Send + Sync + 'static) {
        self.on_activate.push(Box::new(f));
    }

    /// The built version's resources, admin endpoints and activations.
    pub fn finish(self) -> Built {
        Built {
            resources: self.next,
            admin_endpoints: self.admin,
            on_activate: self.on_activate,
        }
    }
}

/// State that outlives a reload, by type and key (see the module comment).
#[derive(Default)]
pub struct Resources {
    entries: HashMap<(TypeId, String), Arc<dyn Any + Send + Sync>>,
}

impl Resources {
    fn get<T: Send + Sync + 'static>(&self, id: &(TypeId, String)) -> Option<Arc<T>> {
        self.entries
            .get(id)
            .and_then(|a| a.clone().downcast::<T>().ok())
    }

    /// How many resources this version holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_key_is_the_same_resource_and_a_dropped_one_is_released() {
        let none = BTreeMap::new();
        let mut first = BuildContext::new(&[], &none, None);
        let a = first.shared::<u32>("a", || Ok(1)).unwrap();
        let b = first.shared::<u32>("b", || Ok(2)).unwrap();
        // Twice in one version: one resource.
        assert!(Arc::ptr_eq(
            &a,
            &first.shared::<u32>("a", || Ok(9)).unwrap()
        ));
        // Same key, other type: another resource.
        assert_eq!(*first.shared::<u64>("a", || Ok(7)).unwrap(), 7);
        let v1 = first.finish().resources;
        assert_eq!(v1.len(), 3);

        let mut second = BuildContext::new(&[], &none, Some(&v1));
        let a2 = second.shared::<u32>("a", || Ok(100)).unwrap();
        assert!(Arc::ptr_eq(&a, &a2), "kept across the reload");
        let v2 = second.finish().resources;
        assert_eq!(v2.len(), 1);
        drop(v1);
        // `b` was not asked for again: only this test's handle is left.
        assert_eq!(Arc::strong_count(&b), 1);
        assert_eq!(Arc::strong_count(&a), 3);
    }

    #[test]
    fn a_failed_init_stores_nothing() {
        let none = BTreeMap::new();
        let mut bctx = BuildContext::new(&[], &none, None);
        assert!(bctx.shared::<u32>("x", || Err("no".into())).is_err());
        assert_eq!(*bctx.shared::<u32>("x", || Ok(3)).unwrap(), 3);
    }

    #[test]
    fn locals_are_one_per_version() {
        let none = BTreeMap::new();
        let mut bctx = BuildContext::new(&[], &none, None);
        let board = bctx.local::<std::sync::Mutex<Vec<u8>>>();
        board.lock().unwrap().push(1);
        assert_eq!(
            *bctx.local::<std::sync::Mutex<Vec<u8>>>().lock().unwrap(),
            [1]
        );
        assert!(bctx.get_local::<String>().is_none());
        bctx.set_local(Arc::new(String::from("s")));
        assert_eq!(bctx.get_local::<String>().unwrap().as_str(), "s");
    }
}

//! Pipeline configuration (`pipelines/*.toml`), the identity of one run (pipeline × trainer ×
//! strategy × seed), its config hash, and the paths of its state and results files.

pub use crate::cache::DatasetCfg;
pub use crate::strategy::SelectCfg;
use crate::strategy::{Build, Strategy, StrategySpec};
pub use crate::train::params::{ClapCfg, CoopCfg, CoopMode, CtCfg, DhoCfg, LinearCfg, TeacherCfg};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    /// Name of the pipeline; the `pipeline=` partition of the results.
    pub name: String,
    pub dataset: DatasetCfg,
    pub seeds: Vec<u64>,
    /// Acquisition rounds; results rows are written for rounds 0..=rounds.
    pub rounds: usize,
    #[serde(default = "one")]
    pub initial_per_class: usize,
    /// A class with fewer than `initial_per_class` train samples gives all of them instead of
    /// being an error (e.g. a ceiling run on every label). Enters the config hash when set; the
    /// results' round-0 `n_labeled` shows the seed labels taken.
    #[serde(default)]
    pub allow_fewer: bool,
    /// Labels bought per round; default: the number of classes.
    #[serde(default)]
    pub budget: Option<usize>,
    pub strategies: Vec<String>,
    #[serde(default = "default_trainers")]
    pub trainers: Vec<String>,
    /// Folder of run state (labels, predictions, queries, heads).
    #[serde(default = "default_runs")]
    pub runs_dir: PathBuf,
    /// Root of the Hive-partitioned results table.
    #[serde(default = "default_results")]
    pub results_dir: PathBuf,
    /// Root of the Hive-partitioned diagnostics table (`select.diagnostics = true`).
    #[serde(default = "default_diagnostics")]
    pub diagnostics_dir: PathBuf,
    #[serde(default = "default_device")]
    pub device: String,
    #[serde(default)]
    pub linear: LinearCfg,
    #[serde(default)]
    pub dho: DhoCfg,
    #[serde(default)]
    pub teacher: TeacherCfg,
    #[serde(default)]
    pub clap: ClapCfg,
    #[serde(default)]
    pub coop: CoopCfg,
    #[serde(default)]
    pub ct: CtCfg,
    /// Parameters of the acquisition strategies (`[select.ccma]`, `[select.mc]`, …).
    #[serde(default)]
    pub select: SelectCfg,
    /// The strategy of a round with no label yet (a zero-label pool's round 0: `typiclust`,
    /// `probcover`, `cb`, `class-balanced`); default: the run's own strategy.
    #[serde(default)]
    pub cold_start: Option<String>,
    /// Who answers the queries: `simulated` (the ground truth) or `person` (`vlal run` stops after
    /// each select until `vlal annotate` or an answers file has the round's answers).
    #[serde(default = "default_oracle")]
    pub oracle: String,
    /// The stopping rules' thresholds and the rule that ends a run (`[stopping]`).
    #[serde(default)]
    pub stopping: crate::stopping::StoppingCfg,
    /// Root of the Hive-partitioned stopping table (default: `stopping` beside `results_dir`).
    #[serde(default)]
    pub stopping_dir: Option<PathBuf>,
    /// The file this pipeline was read from (for the commands a stage suggests).
    #[serde(skip)]
    pub file: PathBuf,
}

/// A pipeline file as a TOML table, with `extends = "other.toml"` (a path relative to the file)
/// resolved: the other file's table with this file's keys merged over it, table by table.
fn load_extended(path: &Path, depth: usize) -> Result<toml::Table> {
    if depth > 8 {
        bail!(
            "{}: `extends` nests more than 8 files deep (a cycle?)",
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let mut t: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        anyhow::anyhow!(
            "{}: {}",
            path.display(),
            e.to_string().replace('\n', " ").trim().to_string()
        )
    })?;
    let Some(base) = t.remove("extends") else {
        return Ok(t);
    };
    let Some(base) = base.as_str() else {
        bail!("{}: `extends` must be a file name", path.display());
    };
    let base_path = path.parent().unwrap_or(Path::new("")).join(base);
    let mut merged = load_extended(&base_path, depth + 1)
        .with_context(|| format!("{}: extends {base}", path.display()))?;
    merge(&mut merged, t);
    Ok(merged)
}

/// `over`'s keys into `base`: tables merge key by key, any other value replaces.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn one() -> usize {
    1
}
fn default_trainers() -> Vec<String> {
    vec!["linear".into()]
}
fn default_runs() -> PathBuf {
    "runs".into()
}
fn default_results() -> PathBuf {
    "results".into()
}
fn default_diagnostics() -> PathBuf {
    "diagnostics".into()
}
fn default_oracle() -> String {
    "simulated".into()
}
fn default_device() -> String {
    "cpu".into()
}

impl Pipeline {
    /// Where the stopping table goes: `stopping_dir`, else `stopping` beside `results_dir`.
    pub fn stopping_dir(&self) -> PathBuf {
        self.stopping_dir
            .clone()
            .unwrap_or_else(|| stopping_beside(&self.results_dir))
    }

    /// The trainers' settings of this pipeline.
    pub fn train_params(&self) -> crate::train::params::TrainParams {
        crate::train::params::TrainParams {
            linear: self.linear.clone(),
            dho: self.dho.clone(),
            teacher: self.teacher.clone(),
            clap: self.clap.clone(),
            coop: self.coop.clone(),
            ct: self.ct.clone(),
        }
    }

    pub fn load(path: &Path) -> Result<Self> {
        let value = load_extended(path, 0)?;
        let p: Pipeline = value.try_into().map_err(|e: toml::de::Error| {
            anyhow::anyhow!(
                "{}: {}",
                path.display(),
                e.to_string().replace('\n', " ").trim().to_string()
            )
        })?;
        p.validate().with_context(|| path.display().to_string())?;
        let mut p = p;
        p.file = path.to_path_buf();
        Ok(p)
    }

    fn validate(&self) -> Result<()> {
        check_name("pipeline name", &self.name)?;
        let tp = self.train_params();
        for t in &self.trainers {
            crate::train::by_name(t, &tp)?;
        }
        for s in &self.strategies {
            parse_strategy(s)?;
        }
        crate::strategy::check_tables(&self.strategy_build())?;
        if self.seeds.is_empty() || self.strategies.is_empty() || self.trainers.is_empty() {
            bail!("seeds, strategies and trainers must each name at least one value");
        }
        if !["none", "hard", "soft"].contains(&self.teacher.la.as_str()) {
            bail!(
                "teacher.la must be none, hard or soft (got '{}')",
                self.teacher.la
            );
        }
        if self.teacher.tau.is_some_and(|t| t <= 0.0) {
            bail!("teacher.tau must be positive");
        }
        if self.budget == Some(0) {
            bail!("budget must be at least 1");
        }
        if let Some(c) = &self.cold_start {
            let (spec, rda) = parse_strategy(c).context("cold_start")?;
            if spec.selective || rda {
                bail!("cold_start: '{c}': a round without labels has nothing for +sq or +rda");
            }
        }
        if !["simulated", "person"].contains(&self.oracle.as_str()) {
            bail!("oracle must be simulated or person (got '{}')", self.oracle);
        }
        self.stopping.validate()?;
        Ok(())
    }

    /// What the strategies' constructors read of this pipeline.
    pub fn strategy_build(&self) -> Build<'_> {
        Build::new(&self.select, self.linear.dropout, self.teacher.tau)
    }

    /// Every run (trainer × strategy × seed) of a validated pipeline.
    pub fn runs(&self) -> Vec<RunSpec> {
        let mut v = Vec::new();
        for t in &self.trainers {
            for s in &self.strategies {
                let (strategy, rda) = parse_strategy(s).expect("a validated pipeline");
                for &seed in &self.seeds {
                    v.push(RunSpec {
                        pipeline: self.clone(),
                        trainer: t.clone(),
                        strategy: strategy.clone(),
                        rda,
                        seed,
                    });
                }
            }
        }
        v
    }
}

/// A run's strategy as written in a pipeline or on the command line, `<base>[+sq][+rda]`: the
/// strategy, and whether the run trains on the retrieved data too (`+rda`).
pub fn parse_strategy(s: &str) -> Result<(StrategySpec, bool)> {
    let (spec, rda) = match s.strip_suffix("+rda") {
        Some(base) => (base, true),
        None => (s, false),
    };
    Ok((spec.parse()?, rda))
}

/// One run: a pipeline with one trainer, one strategy and one seed.
#[derive(Clone, Debug)]
pub struct RunSpec {
    pub pipeline: Pipeline,
    pub trainer: String,
    pub strategy: StrategySpec,
    /// Train on the labeled ∪ retrieved data of the cache (and let TFS count the retrieved
    /// labels); written `+rda` after the strategy in names and ids.
    pub rda: bool,
    pub seed: u64,
}

#[derive(Serialize)]
struct Hashed<'a> {
    dataset: &'a DatasetCfg,
    rounds: usize,
    initial_per_class: usize,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    allow_fewer: bool,
    budget: Option<usize>,
    trainer: &'a str,
    trainer_params: serde_json::Value,
    strategy: &'a str,
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    strategy_params: serde_json::Value,
    /// Set only when the pipeline names one (earlier runs keep their ids).
    #[serde(skip_serializing_if = "Option::is_none")]
    cold_start: Option<&'a str>,
    /// Set only for a person's answers: they are not the simulated oracle's.
    #[serde(skip_serializing_if = "Option::is_none")]
    oracle: Option<&'a str>,
}

impl RunSpec {
    pub fn new(pipeline: &Pipeline, trainer: &str, strategy: &str, seed: u64) -> Result<Self> {
        crate::train::by_name(trainer, &pipeline.train_params())?;
        let (strategy, rda) = parse_strategy(strategy)?;
        let spec = Self {
            pipeline: pipeline.clone(),
            trainer: trainer.into(),
            strategy,
            rda,
            seed,
        };
        spec.build_strategy()?;
        Ok(spec)
    }

    /// The strategy as the run names it in ids, paths and tables: `<base>[+sq][+rda]`.
    pub fn strategy_name(&self) -> String {
        format!("{}{}", self.strategy, if self.rda { "+rda" } else { "" })
    }

    /// The run's trainer with the pipeline's settings.
    pub fn build_trainer(&self) -> Result<Box<dyn crate::train::Trainer>> {
        crate::train::by_name(&self.trainer, &self.pipeline.train_params())
    }

    /// The run's strategy with the pipeline's settings.
    pub fn build_strategy(&self) -> Result<Box<dyn Strategy>> {
        self.strategy.build(&self.pipeline.strategy_build())
    }

    /// Hash of everything that determines a run except its seed (seeds of one config share it).
    pub fn config_hash(&self) -> String {
        let p = &self.pipeline;
        let trainer_params = self
            .build_trainer()
            .expect("a run's trainer was built when the run was made")
            .params();
        let strategy = self.strategy_name();
        let mut strategy_params = self
            .build_strategy()
            .expect("a run's strategy was built when the run was made")
            .params();
        // Before the registry, a name with a suffix (`alfa-mix+rda`) hashed no settings except
        // CCMA's. Such a run on default tables keeps that id; one with settings of its own has
        // them hashed (they used to be ignored, so two settings shared one id).
        if (self.strategy.selective || self.rda) && !self.strategy.base.starts_with("ccma") {
            let defaults = SelectCfg::default();
            let b = Build::new(&defaults, p.linear.dropout, p.teacher.tau);
            let default_params = self.strategy.build(&b).expect("defaults build").params();
            if default_params == strategy_params {
                strategy_params = serde_json::Value::Null;
            }
        }
        let h = Hashed {
            dataset: &p.dataset,
            rounds: p.rounds,
            initial_per_class: p.initial_per_class,
            allow_fewer: p.allow_fewer,
            budget: p.budget,
            trainer: &self.trainer,
            trainer_params,
            strategy: &strategy,
            strategy_params,
            cold_start: p.cold_start.as_deref(),
            oracle: (p.oracle != "simulated").then_some(p.oracle.as_str()),
        };
        let bytes = serde_json::to_vec(&h).expect("serialisable");
        let d = Sha256::digest(&bytes);
        d.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }

    pub fn run_id(&self) -> String {
        format!(
            "{}-{}-seed{}-{}",
            self.trainer,
            self.strategy_name(),
            self.seed,
            &self.config_hash()[..8]
        )
    }

    pub fn run_dir(&self) -> PathBuf {
        self.pipeline
            .runs_dir
            .join(&self.pipeline.name)
            .join(self.run_id())
    }

    pub fn labels_path(&self, round: usize) -> PathBuf {
        self.run_dir()
            .join("labels")
            .join(format!("round-{round:03}.parquet"))
    }
    pub fn predictions_path(&self, round: usize) -> PathBuf {
        self.run_dir()
            .join("predictions")
            .join(format!("round-{round:03}.parquet"))
    }
    pub fn head_path(&self, round: usize) -> PathBuf {
        self.run_dir()
            .join("heads")
            .join(format!("round-{round:03}.safetensors"))
    }
    pub fn queries_path(&self, round: usize) -> PathBuf {
        self.run_dir()
            .join("queries")
            .join(format!("round-{round:03}.parquet"))
    }
    pub fn results_path(&self, round: usize) -> PathBuf {
        self.partition(&self.pipeline.results_dir, round)
    }

    pub fn diagnostics_path(&self, round: usize) -> PathBuf {
        self.partition(&self.pipeline.diagnostics_dir, round)
    }

    pub fn stopping_path(&self, round: usize) -> PathBuf {
        self.partition(&self.pipeline.stopping_dir(), round)
    }

    /// A person's answers to round `round`'s queries (`vlal annotate` writes it; CSV with
    /// sample_id, label, skipped).
    pub fn answers_path(&self, round: usize) -> PathBuf {
        self.run_dir()
            .join("answers")
            .join(format!("round-{round:03}.csv"))
    }

    /// The strategy that picks a round's queries and its name: the pipeline's `cold_start`
    /// while no label exists, else the run's own.
    pub fn strategy_for(&self, n_labeled: usize) -> Result<(Box<dyn Strategy>, String)> {
        match (&self.pipeline.cold_start, n_labeled) {
            (Some(c), 0) => {
                let (spec, _) = parse_strategy(c)?;
                Ok((spec.build(&self.pipeline.strategy_build())?, c.clone()))
            }
            _ => Ok((self.build_strategy()?, self.strategy_name())),
        }
    }

    /// The flags that name this run to a run-level stage (`--pipeline … --seed N`).
    pub fn run_args(&self) -> String {
        format!(
            "--pipeline {} --trainer {} --strategy {} --seed {}",
            self.pipeline.file.display(),
            self.trainer,
            self.strategy_name(),
            self.seed
        )
    }

    fn partition(&self, root: &Path, round: usize) -> PathBuf {
        root.join(format!("pipeline={}", self.pipeline.name))
            .join(format!("strategy={}", self.strategy_name()))
            .join(format!("seed={}", self.seed))
            .join(format!("{}-round-{round:03}.parquet", self.run_id()))
    }

    pub fn label(&self) -> String {
        format!(
            "{}/{}/{}/seed {}",
            self.pipeline.name,
            self.trainer,
            self.strategy_name(),
            self.seed
        )
    }
}

/// The default stopping table folder: `stopping` beside a results folder.
pub fn stopping_beside(results_dir: &Path) -> PathBuf {
    results_dir
        .parent()
        .unwrap_or(Path::new(""))
        .join("stopping")
}

/// A name that becomes a folder or a Hive partition (`pipeline=NAME`): 1–64 of `A–Z a–z 0–9 . _ -`,
/// not starting with a dot, so it can neither leave its parent folder (`..`) nor hide. The
/// error quotes at most 40 characters of it.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = (1..=64).contains(&name.len())
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !ok {
        let shown: String = name.chars().take(40).collect();
        let more = if name.chars().count() > 40 { "…" } else { "" };
        bail!("{what} '{shown}{more}' must be 1–64 characters of A–Z, a–z, 0–9, '.', '_', '-', not starting with '.'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipe(extra: &str) -> Pipeline {
        let t = format!(
            r#"name = "p"
seeds = [0, 1]
rounds = 2
strategies = ["random", "entropy"]
{extra}
[dataset]
name = "d"
root = "data/d"
student = "s@v1"
teacher = "t@v1"
"#
        );
        toml::from_str(&t).unwrap()
    }

    #[test]
    fn a_pipeline_extends_another_key_by_key() {
        let t = tempfile::tempdir().unwrap();
        let base = "name = \"a\"\nseeds = [0, 1]\nrounds = 2\nstrategies = [\"random\"]\n\
            [dataset]\nname = \"d\"\nroot = \"data/d\"\nstudent = \"s\"\nteacher = \"t\"\n\
            [dho]\nlr = 0.01\n";
        std::fs::write(t.path().join("a.toml"), base).unwrap();
        std::fs::create_dir(t.path().join("sub")).unwrap();
        let child = "extends = \"../a.toml\"\nname = \"b\"\n[dataset]\nroot = \"data/e\"\n";
        std::fs::write(t.path().join("sub/b.toml"), child).unwrap();
        let b = Pipeline::load(&t.path().join("sub/b.toml")).unwrap();
        let a = Pipeline::load(&t.path().join("a.toml")).unwrap();
        assert_eq!((b.name.as_str(), a.name.as_str()), ("b", "a"));
        assert_eq!(b.dataset.root, PathBuf::from("data/e"));
        assert_eq!(
            (b.dataset.student.as_str(), b.seeds.clone()),
            ("s", vec![0, 1])
        );
        assert_eq!(b.dho.lr, 0.01);
        // unknown keys of a child are still errors; a cycle is caught
        std::fs::write(
            t.path().join("c.toml"),
            "extends = \"a.toml\"\nrondus = 3\n",
        )
        .unwrap();
        let e = Pipeline::load(&t.path().join("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("c.toml") && e.contains("rondus"), "{e}");
        std::fs::write(t.path().join("d.toml"), "extends = \"d.toml\"\n").unwrap();
        let e = format!(
            "{:#}",
            Pipeline::load(&t.path().join("d.toml")).unwrap_err()
        );
        assert!(e.contains("cycle"), "{e}");
    }

    #[test]
    fn hash_ignores_seed_but_not_params() {
        let p = pipe("");
        let a = RunSpec::new(&p, "linear", "random", 0).unwrap();
        let b = RunSpec::new(&p, "linear", "random", 1).unwrap();
        assert_eq!(a.config_hash(), b.config_hash());
        assert_ne!(a.run_id(), b.run_id());
        let mut q = p.clone();
        q.linear.epochs = 7;
        let c = RunSpec::new(&q, "linear", "random", 0).unwrap();
        assert_ne!(a.config_hash(), c.config_hash());
        // DHO params do not change a linear run's hash
        let mut r = p.clone();
        r.dho.eta = 4.0;
        assert_eq!(
            a.config_hash(),
            RunSpec::new(&r, "linear", "random", 0)
                .unwrap()
                .config_hash()
        );
        assert_eq!(p.runs().len(), 4);
    }

    #[test]
    fn strategy_tables_enter_only_their_strategies_hash() {
        let h = |p: &Pipeline, t: &str, s: &str| RunSpec::new(p, t, s, 0).unwrap().config_hash();
        let base = pipe("");
        let mut rho = base.clone();
        rho.select.tables.insert(
            "ccma".into(),
            toml::Value::Table("rho = 5".parse().unwrap()),
        );
        assert_ne!(h(&base, "linear", "ccma-v1"), h(&rho, "linear", "ccma-v1"));
        assert_eq!(h(&base, "linear", "random"), h(&rho, "linear", "random"));
        // BALD's dropout defaults to the linear probe's: changing that changes a dho run's hash
        let mut drop = base.clone();
        drop.linear.dropout = 0.5;
        assert_ne!(h(&base, "dho", "bald"), h(&drop, "dho", "bald"));
        assert_eq!(h(&base, "dho", "entropy"), h(&drop, "dho", "entropy"));
        // a suffixed name's settings enter its hash too (they once did not)
        let mut eps = base.clone();
        eps.select.tables.insert(
            "alfamix".into(),
            toml::Value::Table("eps_step = 0.5".parse().unwrap()),
        );
        for s in ["alfa-mix", "alfa-mix+rda", "alfa-mix+sq"] {
            assert_ne!(h(&base, "linear", s), h(&eps, "linear", s), "{s}");
        }
        // each released-code switch enters the hash of the runs that read it, only when set
        let set = |table: &str, kv: &str| {
            let mut q = base.clone();
            q.select
                .tables
                .insert(table.into(), toml::Value::Table(kv.parse().unwrap()));
            q
        };
        for (table, kv, strategy) in [
            ("ccma", "bisection = \"released\"", "ccma-v1"),
            ("ccma", "realign = true", "ccma"),
            ("sq", "threshold = \"released\"", "cb+sq"),
            ("cb", "features = \"released\"", "cb"),
            ("class-balanced", "weights = \"released\"", "class-balanced"),
            ("badge", "variant = \"released\"", "badge"),
            ("badge", "variant = \"released\"", "pcb-badge"),
        ] {
            let q = set(table, kv);
            assert_ne!(
                h(&base, "linear", strategy),
                h(&q, "linear", strategy),
                "{kv}"
            );
            assert_eq!(h(&base, "linear", "random"), h(&q, "linear", "random"));
            let paper = set(
                table,
                &kv.replace("\"released\"", "\"paper\"")
                    .replace("true", "false"),
            );
            assert_eq!(
                h(&base, "linear", strategy),
                h(&paper, "linear", strategy),
                "{kv}"
            );
        }
        let mut mix = base.clone();
        mix.dho.mix = crate::variant::Variant::Released;
        assert_ne!(h(&base, "dho", "random"), h(&mix, "dho", "random"));
        let mut tune = base.clone();
        tune.dho.tune = true;
        assert_ne!(h(&base, "dho", "random"), h(&tune, "dho", "random"));
        // and a table no strategy reads, or a bad key, is an error at load
        let mut bad = base.clone();
        bad.select
            .tables
            .insert("alfamixx".into(), toml::Value::Table(Default::default()));
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.starts_with("select.alfamixx: no strategy reads"), "{e}");
        let mut bad = base.clone();
        bad.select.tables.insert(
            "typiclust".into(),
            toml::Value::Table("knn = 3".parse().unwrap()),
        );
        let e = bad.validate().unwrap_err().to_string();
        assert!(
            e.starts_with("select.typiclust: unknown field `knn`"),
            "{e}"
        );
    }

    #[test]
    fn results_path_is_hive_partitioned() {
        let p = pipe("");
        let r = RunSpec::new(&p, "linear", "entropy", 1).unwrap();
        let s = r.results_path(3).display().to_string();
        assert!(
            s.starts_with("results/pipeline=p/strategy=entropy/seed=1/linear-entropy-seed1-"),
            "{s}"
        );
        assert!(s.ends_with("-round-003.parquet"));
    }

    #[test]
    fn unknown_keys_and_names_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.toml");
        std::fs::write(&f, "name = \"p\"\nbogus = 1\n").unwrap();
        let e = Pipeline::load(&f).unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
        assert!(pipe("trainers = [\"nope\"]").validate().is_err());
    }

    #[test]
    fn names_cannot_leave_their_folder() {
        for bad in ["..", ".", ".hidden", "a/b", "a\\b", "p=1", "", "a b", "é"] {
            let e = check_name("pipeline name", bad).unwrap_err().to_string();
            assert!(e.starts_with("pipeline name '"), "{bad}: {e}");
        }
        let long = "x".repeat(10_000_000);
        let e = check_name("pipeline name", &long).unwrap_err().to_string();
        assert!(e.len() < 200, "{}", e.len());
        for good in ["demo", "demo-all-labels", "p_1.v2", "e2e"] {
            check_name("pipeline name", good).unwrap();
        }
    }
}

//! The `vlal` command line: one subcommand per pipeline stage.

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use vlal::cache::Cache;
use vlal::config::{Pipeline, RunSpec};
use vlal::stages::{self, run::Filter};

#[derive(Parser)]
#[command(
    name = "vlal",
    version,
    about = "Active learning guided by vision-language models, on a Parquet feature cache"
)]
struct Cli {
    /// No log lines (errors are still printed).
    #[arg(long, short, global = true)]
    quiet: bool,
    /// Details too: every file written, every round's score inside `vlal run`.
    #[arg(long, short, global = true)]
    verbose: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

/// Which run of a pipeline a stage works on (defaults: the pipeline's first trainer, strategy, seed).
#[derive(clap::Args)]
struct RunArgs {
    /// Pipeline config (pipelines/*.toml).
    #[arg(long)]
    pipeline: PathBuf,
    #[arg(long)]
    trainer: Option<String>,
    #[arg(long)]
    strategy: Option<String>,
    #[arg(long)]
    seed: Option<u64>,
    /// Selective querying on top of the strategy (the same as naming it `<strategy>+sq`).
    #[arg(long)]
    selective: bool,
    /// Train on the labeled ∪ retrieved data, and let TFS count the retrieved labels (the same
    /// as naming the strategy `<strategy>+rda`); `off` removes a `+rda` the name has.
    #[arg(long, value_enum)]
    rda: Option<OnOff>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ExportFormat {
    LabelStudio,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
}

/// The strategy name with selective querying and retrieved data applied: `<base>[+sq][+rda]`.
fn compose(s: &str, selective: bool, rda: Option<OnOff>) -> Result<String> {
    let (mut spec, had) = vlal::config::parse_strategy(s)?;
    spec.selective |= selective;
    let on = match rda {
        Some(OnOff::On) => true,
        Some(OnOff::Off) => false,
        None => had,
    };
    Ok(format!("{spec}{}", if on { "+rda" } else { "" }))
}

impl RunArgs {
    fn spec(&self) -> Result<RunSpec> {
        let p = Pipeline::load(&self.pipeline)?;
        let t = self
            .trainer
            .clone()
            .unwrap_or_else(|| p.trainers[0].clone());
        let s = self
            .strategy
            .clone()
            .unwrap_or_else(|| p.strategies[0].clone());
        let s = compose(&s, self.selective, self.rda)?;
        let seed = self.seed.unwrap_or(p.seeds[0]);
        RunSpec::new(&p, &t, &s, seed)
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the teacher (CLIP) and the student (DINOv2 or CLIP) over an image folder or manifest
    /// once, caching embeddings, class prototypes and teacher logits.
    Extract(stages::extract::ExtractArgs),
    /// Generate the example feature cache (the layout `extract` writes).
    Synth(stages::synth::SynthArgs),
    /// Write a tiny offline world: random-weight CLIP and DINOv2 checkpoints (HF layout) and
    /// generated class images, to try `extract` and the prompt trainer without downloads.
    Tiny(stages::tiny::TinyArgs),
    /// Write an IDX image/label pair (MNIST, Fashion-MNIST) as an image folder for `extract`.
    ImportIdx(stages::import_idx::ImportIdxArgs),
    /// Fit a teacher "trained elsewhere": a linear probe on a classifier backbone's cached raw
    /// features of held-out images, written as a classifier checkpoint for `extract --teacher`.
    FitTeacher(stages::fit_teacher::FitTeacherArgs),
    /// Pull samples of the task's classes from a LAION-style corpus of Parquet shards (ALOR):
    /// whole-word caption matches, top k per class by cos(caption, class prototype).
    Retrieve(stages::retrieve::RetrieveArgs),
    /// Generate a LAION-style corpus of captioned images (Parquet shards) to try `retrieve`.
    Corpus(stages::corpus::CorpusArgs),
    /// Fit the student head on a round's labels; write predictions and the head.
    Train {
        #[command(flatten)]
        run: RunArgs,
        #[arg(long)]
        round: usize,
    },
    /// Pick the next batch to label with the run's strategy; write queries.
    Select {
        #[command(flatten)]
        run: RunArgs,
        #[arg(long)]
        round: usize,
        /// Labels to buy (default: the pipeline's budget, else the number of classes).
        #[arg(long)]
        budget: Option<usize>,
    },
    /// The oracle: seed labels (--init, drawn or --from-file), simulated answers, or a person's
    /// answers (--from-file).
    Label {
        #[command(flatten)]
        run: RunArgs,
        /// Draw round 0's seed labels.
        #[arg(long, conflicts_with = "round")]
        init: bool,
        /// Answer this round's queries (writes the next round's labels).
        #[arg(long, required_unless_present = "init")]
        round: Option<usize>,
        /// CSV or Parquet with columns sample_id, label (class id or name).
        #[arg(long)]
        from_file: Option<PathBuf>,
    },
    /// Label a round's queries in the browser: a local web page (127.0.0.1) that saves each
    /// answer at once; `vlal label --from-file` or `vlal run` (oracle = "person") takes them.
    Annotate {
        #[command(flatten)]
        run: RunArgs,
        /// The round (default: the first whose queries have no next labels yet).
        #[arg(long)]
        round: Option<usize>,
        #[command(flatten)]
        serve: stages::annotate::AnnotateArgs,
    },
    /// Write a round's queries for another labeling tool (Label Studio tasks JSON).
    Export {
        #[command(flatten)]
        run: RunArgs,
        #[arg(long)]
        round: usize,
        #[arg(long, value_enum, default_value = "label-studio")]
        format: ExportFormat,
        /// The tasks file (default: <run>/export/round-NNN.label-studio.json); the labeling
        /// config goes beside it.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Put before each image's path (its leading / dropped): Label Studio's local files by
        /// default (LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=/), or the URL the images are served at.
        #[arg(long, default_value = "/data/local-files/?d=")]
        image_prefix: String,
    },
    /// Score a round on the test split and append its results row.
    Eval {
        #[command(flatten)]
        run: RunArgs,
        #[arg(long)]
        round: usize,
    },
    /// Run every trainer × strategy × seed of a pipeline, resuming completed rounds.
    Run {
        pipeline: PathBuf,
        #[arg(long)]
        trainer: Vec<String>,
        #[arg(long)]
        strategy: Vec<String>,
        #[arg(long)]
        seed: Vec<u64>,
        /// Run every strategy with selective querying on top (`<strategy>+sq`).
        #[arg(long)]
        selective: bool,
        /// `on`: every strategy with retrieved data (`+rda`); `off`: every one without.
        #[arg(long, value_enum)]
        rda: Option<OnOff>,
        /// Stop every run after this round (a later run resumes from there).
        #[arg(long)]
        max_round: Option<usize>,
        /// Only part I of N (0-based) of the selected runs: every N-th, in pipeline order (one
        /// Slurm array task each: `--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT`).
        #[arg(long)]
        shard: Option<vlal::shard::Shard>,
        /// Who answers the queries (overrides the pipeline's `oracle`): `person` stops each run
        /// after its select until the round's answers exist (`vlal annotate`).
        #[arg(long, value_parser = ["simulated", "person"])]
        oracle: Option<String>,
    },
    /// Summarise the results table: accuracy mean ± std over seeds per round.
    Report {
        #[arg(long, default_value = "results")]
        results: PathBuf,
        /// Only these pipelines (repeat the flag for several; default: all).
        #[arg(long)]
        pipeline: Vec<String>,
        /// Also draw the learning curves (mean ± std over seeds vs labels), one panel per
        /// pipeline × trainer, into this PNG.
        #[arg(long)]
        plot: Option<PathBuf>,
        /// What follows ±: the std over seeds, or the 95% CI half-width of the mean.
        #[arg(long, value_enum, default_value = "std")]
        stat: stages::report::Spread,
        /// Instead: at which round each stopping rule would have stopped each run, and the
        /// accuracy given up (reads the stopping table beside the results folder).
        #[arg(long)]
        stopping: bool,
        /// The stopping table's folder (default: `stopping` beside the results folder).
        #[arg(long)]
        stopping_dir: Option<PathBuf>,
    },
    /// Print a run's state folder and the path of a round's files (for Makefiles).
    Paths {
        #[command(flatten)]
        run: RunArgs,
        #[arg(long, default_value_t = 0)]
        round: usize,
    },
}

fn load(spec: &RunSpec) -> Result<Cache> {
    let p = &spec.pipeline;
    Cache::load_at_tau(&p.dataset, p.teacher.tau, stages::need_of(spec)?)
}

/// [`load`] with the teacher's logits when the cache has them (its suggestions to a person).
fn load_for_person(spec: &RunSpec) -> Result<Cache> {
    let p = &spec.pipeline;
    let mut need = stages::need_of(spec)?;
    need.logits |= vlal::cache::logits_path(&p.dataset.root, &p.dataset.teacher, "train").exists();
    Cache::load_at_tau(&p.dataset, p.teacher.tau, need)
}

fn main_inner(cli: Cli) -> Result<()> {
    vlal::progress::set_level(cli.quiet, cli.verbose);
    match cli.cmd {
        Cmd::Extract(a) => stages::extract::run(&a),
        Cmd::Synth(a) => stages::synth::run(&a),
        Cmd::Tiny(a) => stages::tiny::run(&a),
        Cmd::ImportIdx(a) => stages::import_idx::run(&a),
        Cmd::FitTeacher(a) => stages::fit_teacher::run(&a),
        Cmd::Retrieve(a) => stages::retrieve::run(&a),
        Cmd::Corpus(a) => stages::corpus::run(&a),
        Cmd::Train { run, round } => {
            let spec = run.spec()?;
            stages::sweep_run(&spec);
            stages::train::run(&spec, &load(&spec)?, round)
        }
        Cmd::Select { run, round, budget } => {
            let spec = run.spec()?;
            stages::sweep_run(&spec);
            let cache = load(&spec)?;
            let b = budget.or(spec.pipeline.budget).unwrap_or(cache.n_classes());
            if b == 0 {
                bail!("budget must be at least 1");
            }
            stages::select::run(&spec, &cache, round, b)
        }
        Cmd::Label {
            run,
            init,
            round,
            from_file,
        } => {
            let spec = run.spec()?;
            stages::sweep_run(&spec);
            let cache = load(&spec)?;
            match (init, round, from_file) {
                (true, _, None) => stages::label::init(&spec, &cache),
                (true, _, Some(f)) => stages::label::from_file(&spec, &cache, None, &f),
                (false, Some(r), Some(f)) => stages::label::from_file(&spec, &cache, Some(r), &f),
                (false, Some(r), None) => stages::label::oracle(&spec, &cache, r),
                (false, None, _) => bail!("--round is required unless --init"),
            }
        }
        Cmd::Annotate { run, round, serve } => {
            let spec = run.spec()?;
            let round = match round {
                Some(r) => r,
                None => stages::annotate::waiting_round(&spec)?,
            };
            stages::annotate::run(&spec, &load_for_person(&spec)?, round, &serve)
        }
        Cmd::Export {
            run,
            round,
            format: ExportFormat::LabelStudio,
            out,
            image_prefix,
        } => {
            let spec = run.spec()?;
            let out = out.unwrap_or_else(|| stages::export::default_out(&spec, round));
            stages::export::label_studio(
                &spec,
                &load_for_person(&spec)?,
                round,
                &out,
                &image_prefix,
            )
        }
        Cmd::Eval { run, round } => {
            let spec = run.spec()?;
            stages::sweep_run(&spec);
            stages::eval::run(&spec, &load(&spec)?, round).map(|_| ())
        }
        Cmd::Run {
            pipeline,
            trainer,
            strategy,
            seed,
            selective,
            rda,
            max_round,
            shard,
            oracle,
        } => {
            let mut p = Pipeline::load(&pipeline)?;
            if let Some(o) = oracle {
                p.oracle = o;
            }
            let mut strategies = strategy;
            if selective || rda.is_some() {
                let apply = |v: &mut Vec<String>| -> Result<()> {
                    let mut seen = std::collections::HashSet::new();
                    let mut out = Vec::new();
                    for s in v.iter() {
                        let c = compose(s, selective, rda)?;
                        if seen.insert(c.clone()) {
                            out.push(c);
                        }
                    }
                    *v = out;
                    Ok(())
                };
                apply(&mut p.strategies)?;
                apply(&mut strategies)?;
            }
            stages::run::run(
                &p,
                &Filter {
                    trainers: trainer,
                    strategies,
                    seeds: seed,
                    max_round,
                    shard,
                },
            )
        }
        Cmd::Report {
            results,
            pipeline,
            plot,
            stat,
            stopping,
            stopping_dir,
        } => {
            let pipelines: Vec<&str> = pipeline.iter().map(String::as_str).collect();
            if stopping {
                let dir = stopping_dir.unwrap_or_else(|| vlal::config::stopping_beside(&results));
                print!(
                    "{}",
                    stages::report::stopping_text(&results, &dir, &pipelines)?
                );
                return Ok(());
            }
            // every results file is read once, for the curves and the AULC
            let rows = stages::report::scan(&results, &pipelines)?;
            let groups = stages::report::summarise(&rows);
            print!("{}", stages::report::render(&groups, stat)?);
            print!("{}", stages::report::aulc_text(&rows));
            if let Some(path) = plot {
                vlal::plot::learning_curves(&groups, &path)?;
                vlal::progress::log(format!("wrote {}", path.display()));
            }
            Ok(())
        }
        Cmd::Paths { run, round } => {
            let spec = run.spec()?;
            println!("RUN_DIR={}", spec.run_dir().display());
            println!("LABELS={}", spec.labels_path(round).display());
            println!("PREDICTIONS={}", spec.predictions_path(round).display());
            println!("QUERIES={}", spec.queries_path(round).display());
            println!("NEXT_LABELS={}", spec.labels_path(round + 1).display());
            println!("RESULTS={}", spec.results_path(round).display());
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    vlal::table::mark_process_start();
    // Errors are one line: libraries (candle) must not capture a backtrace into their error
    // text even when RUST_BACKTRACE is set; panics still print theirs.
    std::env::set_var("RUST_LIB_BACKTRACE", "0");
    let cli = Cli::parse();
    match main_inner(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

/// An error message as one line of at most 1 000 characters (an input echoed in an error, such
/// as a 10 MB name, is cut).
fn one_line(msg: &str) -> String {
    const MAX: usize = 1000;
    let line = msg.replace('\n', " ");
    match line.char_indices().nth(MAX) {
        Some((at, _)) => format!(
            "{}… ({} characters cut)",
            &line[..at],
            line[at..].chars().count()
        ),
        None => line,
    }
}

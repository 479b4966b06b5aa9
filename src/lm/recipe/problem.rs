//! The recipe's sequences: prompts drawn and split, responses `prefix + word` built through the
//! chat template, and the pairs of every evaluation split.

use super::config::{source_prompts, RecipeData, RecipeFile, ResponseSpec, Source, SplitRule};
use super::preferences::{problem_of_sets, select_sets, SetReport};
use crate::lm::data::torch_rng::TorchGenerator;
use crate::lm::train::sequences::EvalBatch;
use crate::lm::train::sequences::PairSplit;
use crate::lm::train::sequences::PreferenceProblem;
use crate::lm::train::sequences::ScoredSequence;
use crate::lm::train::sequences::SequenceBuilder;
use crate::lm::train::sequences::Side;
use crate::lm::LanguageModel;
use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Train and test prompts by `d.split`: with `"groups"`, groups in seeded order, train filled
/// first (a group cut at the boundary is dropped, so no behaviour is on both sides); with
/// `"official"`, the official datamodule's `torch.randperm` (its generator returned for the
/// response draws).
pub(super) fn select_prompts(
    d: &RecipeData,
    rng: &mut ChaCha8Rng,
) -> Result<(Vec<String>, Vec<String>, Option<TorchGenerator>)> {
    let prompts = source_prompts(d)?;
    let (train, test, torch) = match d.split {
        SplitRule::Groups => {
            let (train, test) = by_groups(&prompts, d, rng);
            (train, test, None)
        }
        SplitRule::Official => {
            let mut g = TorchGenerator::manual_seed(d.split_seed);
            let perm = g.randperm(prompts.len());
            let take = |r: std::ops::Range<usize>| -> Vec<String> {
                perm.get(r)
                    .unwrap_or(&[])
                    .iter()
                    .map(|&k| prompts[k].clone())
                    .collect()
            };
            let n = d.train_prompts;
            (take(0..n), take(n..n + d.test_prompts), Some(g))
        }
    };
    if train.len() < d.train_prompts || test.len() < d.test_prompts {
        bail!(
            "statements file {} has {} usable prompts in groups of {}: not enough for data.train_prompts = {} and data.test_prompts = {} ({} in whole groups)",
            d.statements.display(),
            prompts.len(),
            d.group_size,
            d.train_prompts,
            d.test_prompts,
            d.train_prompts + d.test_prompts
        );
    }
    Ok((train, test, torch))
}

/// Whole groups of `d.group_size` prompts in seeded order, train filled first.
fn by_groups(
    prompts: &[String],
    d: &RecipeData,
    rng: &mut ChaCha8Rng,
) -> (Vec<String>, Vec<String>) {
    let mut groups: Vec<&[String]> = prompts.chunks(d.group_size).collect();
    groups.shuffle(rng);
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for g in groups {
        if train.len() < d.train_prompts {
            let take = (d.train_prompts - train.len()).min(g.len());
            train.extend_from_slice(&g[..take]);
        } else if test.len() < d.test_prompts {
            let take = (d.test_prompts - test.len()).min(g.len());
            test.extend_from_slice(&g[..take]);
        }
    }
    (train, test)
}

/// A recipe's problem, and what was read of each preference set (empty for the persona).
pub struct Built {
    pub problem: PreferenceProblem,
    pub sets: Vec<SetReport>,
}

/// The problem of `file`'s data source on `lm` ([`build`] without the sets' reports).
pub fn build_problem(file: &RecipeFile, lm: &LanguageModel) -> Result<PreferenceProblem> {
    Ok(build(file, lm)?.problem)
}

/// [`build`] for a command's input: a data error stays itself (it names the file, row and
/// column), any other failure (statements, tokenization, chat template) becomes an input error;
/// both exit with code 2.
pub fn build_input(file: &RecipeFile, lm: &LanguageModel) -> Result<Built> {
    build(file, lm).map_err(
        |e| match e.downcast::<crate::lm::data::preference::DataError>() {
            Ok(d) => d.into(),
            Err(e) => anyhow::Error::from(crate::error::InputError(format!("{e:#}"))),
        },
    )
}

/// The sequences and splits of `file`'s data source through `lm`'s prompt format: the persona's
/// drawn pairs ([`persona_problem`]) or the preference sets
/// ([`super::preferences::problem_of_sets`]).
pub fn build(file: &RecipeFile, lm: &LanguageModel) -> Result<Built> {
    let format = super::template::PromptFormat::of(&lm.dir, lm.arch, file)?;
    let added_tokens = added_token_ids(lm, &format)?;
    let prompt_format = format.description;
    let builder = SequenceBuilder {
        lm,
        template: format.template,
    };
    let (mut problem, sets) = match file.source() {
        Source::Persona(d, r) => (persona_problem(file, (d, r), builder)?, vec![]),
        Source::Preferences(p) => {
            let selected = select_sets(p, lm)?;
            let mut problem = problem_of_sets(&selected, &builder, lm.arch.is_causal())?;
            problem.eval_batches = problem
                .splits
                .iter()
                .flat_map(|s| pair_batches(s, file.train.micro_batch))
                .collect();
            (problem, selected.reports)
        }
    };
    problem.prompt_format = prompt_format;
    problem.added_tokens = added_tokens;
    Ok(Built { problem, sets })
}

/// Draws the persona's pairs (MATH.md §6): per prompt one prefix and one word per side for the
/// training responses (train and test prompts), and one evaluation prefix per side for the
/// shifted responses, scored with every evaluation word.
fn persona_problem(
    file: &RecipeFile,
    (data, r): (&RecipeData, &ResponseSpec),
    builder: SequenceBuilder,
) -> Result<PreferenceProblem> {
    let mut rng = ChaCha8Rng::seed_from_u64(file.seed);
    let (train, test, torch) = select_prompts(data, &mut rng)?;
    let causal = builder.lm.arch.is_causal();
    let mut draw = SplitDraw {
        builder,
        responses: r,
        rng,
        torch,
        sequences: Vec::new(),
    };
    let mut splits = Vec::new();
    for (name, prompts, offset) in [("train", &train, 0), ("test", &test, train.len())] {
        splits.push(draw.training_split(name, prompts, offset)?);
    }
    let mut eval_batches = Vec::new();
    for (k, (name, prompts, offset)) in [
        ("paraphrased_train", &train, 0),
        ("paraphrased_test", &test, train.len()),
    ]
    .into_iter()
    .enumerate()
    {
        let (split, paraphrases) = draw.paraphrased_split(name, prompts, offset)?;
        let batch = file.train.micro_batch;
        eval_batches.extend(official_eval_batches(&splits[k], &paraphrases, batch));
        splits.push(split);
    }
    let verification = match causal {
        true => verification_sequences(&draw.builder, &draw.sequences, &train, &test)?,
        false => vec![],
    };
    Ok(PreferenceProblem {
        prompts_train: train,
        prompts_test: test,
        sequences: draw.sequences,
        splits,
        prompt_format: String::new(),
        added_tokens: vec![],
        verification,
        eval_batches,
    })
}

/// The paraphrased sequences of one split: `chosen[i][a]` is prompt `i` with evaluation word `a`
/// (and `rejected[i][z]` likewise).
struct Paraphrases {
    chosen: Vec<Vec<usize>>,
    rejected: Vec<Vec<usize>>,
}

/// The batches the official persona evaluator scores (`persona_reward_model_evaluator.py`), in
/// `batch` consecutive prompts: the training-format pairs of `training` (the official train
/// loader shuffles them each evaluation; rmflow keeps the split's order), and for each
/// evaluation word on one side, its paraphrased responses beside the same prompts' training
/// responses on the other side (`__modify_dataset_for_token` replaces one side only).
fn official_eval_batches(
    training: &PairSplit,
    paraphrases: &Paraphrases,
    batch: usize,
) -> Vec<EvalBatch> {
    let n = training.chosen.len();
    let chunks = || (0..n).step_by(batch).map(move |k| k..(k + batch).min(n));
    let mut out = pair_batches(training, batch);
    let words = |side: &[Vec<usize>]| side.first().map_or(0, Vec::len);
    for (side, other) in [
        (&paraphrases.chosen, &training.rejected),
        (&paraphrases.rejected, &training.chosen),
    ] {
        out.extend((0..words(side)).flat_map(|w| {
            chunks().map(move |c| EvalBatch {
                scored: c.clone().map(|i| side[i][w]).collect(),
                beside: other[c].to_vec(),
            })
        }));
    }
    out
}

/// The official evaluator's batches of a split's pairs: `batch` consecutive pairs, chosen then
/// rejected responses padded together (`reward_model_evaluator.py`, unshuffled loaders).
fn pair_batches(split: &PairSplit, batch: usize) -> Vec<EvalBatch> {
    let n = split.chosen.len();
    (0..n)
        .step_by(batch)
        .map(|k| k..(k + batch).min(n))
        .map(|c| EvalBatch {
            scored: [&split.chosen[c.clone()], &split.rejected[c]].concat(),
            beside: vec![],
        })
        .collect()
}

/// The ids of the tokens `format` adds, which `lm` must have been loaded with
/// ([`super::template::load_recipe_model`]).
fn added_token_ids(
    lm: &LanguageModel,
    format: &super::template::PromptFormat,
) -> Result<Vec<(String, u32)>> {
    let Some(added) = &format.added else {
        return Ok(vec![]);
    };
    added
        .tokens
        .iter()
        .map(|t| {
            let id = lm.tokenizer.token_to_id(t).with_context(|| {
                format!(
                    "{}: the default template's token {t:?} is not in the tokenizer (load the model with recipe::load_recipe_model)",
                    lm.dir.display()
                )
            })?;
            Ok((t.clone(), id))
        })
        .collect()
}

/// The EX-GRM's verification request for each sequence (prompts indexed train first).
fn verification_sequences(
    builder: &SequenceBuilder,
    sequences: &[ScoredSequence],
    train: &[String],
    test: &[String],
) -> Result<Vec<ScoredSequence>> {
    sequences
        .iter()
        .map(|s| {
            let prompt = train
                .iter()
                .chain(test)
                .nth(s.prompt)
                .expect("prompt index");
            builder.verification(s.prompt, prompt, s.side, &s.prefix, &s.word)
        })
        .collect()
}

/// Draws the splits' responses from one seeded RNG, in a fixed order, appending their
/// sequences.
struct SplitDraw<'a> {
    builder: SequenceBuilder<'a>,
    responses: &'a ResponseSpec,
    rng: ChaCha8Rng,
    /// `data.split = "official"`: the training responses' draws come from torch's generator.
    torch: Option<TorchGenerator>,
    sequences: Vec<ScoredSequence>,
}

impl SplitDraw<'_> {
    fn pick(&mut self, v: &[String]) -> String {
        v[self.rng.random_range(0..v.len())].clone()
    }

    /// A training response's prefix or word: from torch's generator under the official split.
    fn pick_training(&mut self, v: &[String]) -> String {
        match self.torch.as_mut() {
            Some(g) => v[g.randint(v.len())].clone(),
            None => self.pick(v),
        }
    }

    /// Appends a sequence and returns its index.
    fn push(
        &mut self,
        prompt: usize,
        text: &str,
        side: Side,
        prefix: &str,
        word: &str,
    ) -> Result<usize> {
        let s = self.builder.build(prompt, text, side, prefix, word)?;
        self.sequences.push(s);
        Ok(self.sequences.len() - 1)
    }

    /// One pair per prompt, prefixes and words drawn from the training lists.
    fn training_split(
        &mut self,
        name: &str,
        prompts: &[String],
        offset: usize,
    ) -> Result<PairSplit> {
        let r = self.responses;
        let mut split = PairSplit {
            name: name.into(),
            chosen: vec![],
            rejected: vec![],
        };
        for (i, p) in prompts.iter().enumerate() {
            let cp = self.pick_training(&r.chosen_prefixes);
            let cw = self.pick_training(&r.chosen_words);
            let rp = self.pick_training(&r.rejected_prefixes);
            let rw = self.pick_training(&r.rejected_words);
            split
                .chosen
                .push(self.push(offset + i, p, Side::Chosen, &cp, &cw)?);
            split
                .rejected
                .push(self.push(offset + i, p, Side::Rejected, &rp, &rw)?);
        }
        Ok(split)
    }

    /// Every (chosen word, rejected word) combination of the evaluation lists on every prompt,
    /// with one drawn evaluation prefix per side and prompt.
    fn paraphrased_split(
        &mut self,
        name: &str,
        prompts: &[String],
        offset: usize,
    ) -> Result<(PairSplit, Paraphrases)> {
        let r = self.responses;
        let mut chosen_of: Vec<Vec<usize>> = Vec::new();
        let mut rejected_of: Vec<Vec<usize>> = Vec::new();
        for (i, p) in prompts.iter().enumerate() {
            let cp = self.pick(&r.eval_chosen_prefixes);
            let rp = self.pick(&r.eval_rejected_prefixes);
            let mut c = Vec::new();
            for w in &r.eval_chosen_words {
                c.push(self.push(offset + i, p, Side::Chosen, &cp, w)?);
            }
            let mut rj = Vec::new();
            for w in &r.eval_rejected_words {
                rj.push(self.push(offset + i, p, Side::Rejected, &rp, w)?);
            }
            chosen_of.push(c);
            rejected_of.push(rj);
        }
        let mut split = PairSplit {
            name: name.into(),
            chosen: vec![],
            rejected: vec![],
        };
        for a in 0..r.eval_chosen_words.len() {
            for z in 0..r.eval_rejected_words.len() {
                for (c, rj) in chosen_of.iter().zip(&rejected_of) {
                    split.chosen.push(c[a]);
                    split.rejected.push(rj[z]);
                }
            }
        }
        let paraphrases = Paraphrases {
            chosen: chosen_of,
            rejected: rejected_of,
        };
        Ok((split, paraphrases))
    }
}

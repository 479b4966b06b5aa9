//! The reward models the trainer trains for `lm-recipe` and `ham-cycle` (MATH.md §1, §6; the
//! official `objective` and its flags in `utils/rm_utils.py` and
//! `rm_exps/train/reward_model_trainer.py`).

use serde::Serialize;

/// The official EX-GRM input (`GEN_RM_INPUT_FORMAT`): the question and the answer in a verification
/// request, rendered as a user turn with the generation prompt.
pub const VERIFICATION_FORMAT: &str =
    "Question: {question}\nAnswer: {answer}\nVerification: Is the answer correct (Yes/No)?";
/// The token whose probability is the EX-GRM's reward (`GEN_RM_CHOSEN_RESPONSE_TOKEN`).
pub const YES_TOKEN: &str = "Yes";
/// The token a rejected response is trained towards (`GEN_RM_REJECTED_RESPONSE_TOKEN`).
pub const NO_TOKEN: &str = "No";

/// One reward model (its `--rewards` name in `lm-recipe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reward {
    /// EX-RM `r = u·h` at the last response token (`ex_rm`).
    Exrm,
    /// EX-RM on the mean reward over the response tokens, `r = (1/K) Σ_k u·h_k` (`ex_rm` with
    /// `use_all_response_hidden_embeddings`).
    ExrmTokenMean,
    /// IM-RM `r = β Σ_k [ln π(y_k|·) − ln π_ref(y_k|·)]` (`im_rm`).
    Imrm,
    /// IM-RM without a reference, `r = β Σ_k ln π(y_k|·)`, trained on its own margins (`im_rm`
    /// with `no_ref_model`).
    ImrmNoRef,
    /// Generative RM (the paper's appendix A, `gen_rm`): `r = P("Yes" | verification prompt)`,
    /// trained by cross-entropy towards "Yes" for the chosen and "No" for the rejected response.
    Exgrm,
}

impl Reward {
    /// Every reward model, in the order runs are made.
    pub const ALL: [Reward; 5] = [
        Reward::Exrm,
        Reward::Imrm,
        Reward::ExrmTokenMean,
        Reward::ImrmNoRef,
        Reward::Exgrm,
    ];

    /// Name in files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Reward::Exrm => "exrm",
            Reward::ExrmTokenMean => "exrm_token_mean",
            Reward::Imrm => "imrm",
            Reward::ImrmNoRef => "imrm_no_ref",
            Reward::Exgrm => "exgrm",
        }
    }

    /// Name in messages.
    pub fn label(self) -> &'static str {
        match self {
            Reward::Exrm => "EX-RM",
            Reward::ExrmTokenMean => "EX-RM (token mean)",
            Reward::Imrm => "IM-RM",
            Reward::ImrmNoRef => "IM-RM (no reference)",
            Reward::Exgrm => "EX-GRM",
        }
    }

    /// The reward model named `name` ([`Self::name`]).
    pub fn from_name(name: &str) -> Option<Reward> {
        Self::ALL.into_iter().find(|r| r.name() == name)
    }

    /// Reads the language model's `ln π` of the response tokens (IM-RMs).
    pub fn is_implicit(self) -> bool {
        matches!(self, Reward::Imrm | Reward::ImrmNoRef)
    }

    /// Trains a linear head `u` over the hidden states (EX-RMs).
    pub fn has_head(self) -> bool {
        matches!(self, Reward::Exrm | Reward::ExrmTokenMean)
    }

    /// Reads the unembedding `U` (IM-RMs and the EX-GRM): what head-only mode trains.
    pub fn reads_unembedding(self) -> bool {
        !self.has_head()
    }
}

"""GraNd at initialisation against Kirsch's input-norm baseline, on the SNLI recipe's training pairs.

Scores the recipe's training split (same config file, same subset) with `GraNdScorer` on the pretrained encoder and
each scoring seed's fresh head, and with `InputNormScorer`, then prints Spearman rank correlations as JSON: GraNd
with the input norm, with the mean token-embedding norm and with the length, and GraNd between two seeds. No
fine-tuning; the full recipe (`--scores grand --grand_at_initialization true`) reports the first two next to its
pruning results.

    python recipes/snli_grand_at_init.py --config recipes/configs/snli_offline_cpu.yaml
"""

from __future__ import annotations

import argparse
import contextlib
import json


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="an SNLI recipe config (its data, model and scoring seeds)")
    parser.add_argument("--batch_size", type=int, default=64)
    args = parser.parse_args(argv)

    from scipy.stats import spearmanr

    from hf_influence.config_files import RecipeParser
    from hf_influence.experiments import text_classification as tc
    from hf_influence.experiments.scoring import ScoringPlan
    from hf_influence.scorers import GraNdScorer, InputNormScorer

    parser = RecipeParser((tc.ModelArguments, tc.DataArguments, ScoringPlan), ignore_unknown=True)
    model_args, data_args, plan = parser.parse(["--config", args.config])
    name, config = tc.load_model_config(model_args)
    tokenizer = tc.load_tokenizer(model_args, name)
    splits = tc.prepare_splits(tc.load_raw_splits(data_args), data_args, model_args.num_labels)
    train = tc.tokenize_splits({"train": splits["train"]}, tokenizer, data_args,
                               lambda desc="": contextlib.nullcontext())["train"]
    seeds = list(plan.scoring_seeds)
    models = [tc.load_model(name, config, tokenizer, seed, quiet=True) for seed in seeds]
    common = {"tokenizer": tokenizer, "batch_size": args.batch_size, "label_column": data_args.label_column}
    per_seed = [GraNdScorer(model, **common)(train)["grand"] for model in models]
    grand = [sum(values) / len(values) for values in zip(*per_seed)]
    norm = InputNormScorer(models[0], **common)(train)["input_norm"]
    mean_norm = InputNormScorer(models[0], reduce="mean", **common)(train)["input_norm"]
    lengths = [len(ids) for ids in train["input_ids"]]
    result = {
        "num_pairs": len(train),
        "seeds": seeds,
        "spearman_grand_input_norm": spearmanr(grand, norm).statistic,
        "spearman_grand_mean_token_norm": spearmanr(grand, mean_norm).statistic,
        "spearman_grand_length": spearmanr(grand, lengths).statistic,
        "spearman_input_norm_length": spearmanr(norm, lengths).statistic,
    }
    if len(per_seed) > 1:
        result["spearman_grand_seed_0_vs_1"] = spearmanr(per_seed[0], per_seed[1]).statistic
    print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.items()}, indent=2))
    return result


if __name__ == "__main__":
    main()

/**
 * ajuste's public API. Everything not exported here is internal and may move.
 */
export { UserError } from './errors.js';
// tensors and autograd
export { Tensor, type DType } from './tensor/tensor.js';
export { backward, noGrad, scope, parameter, checkpoint } from './tensor/autograd.js';
export { memoryStats } from './tensor/memory.js';
export { Rng } from './tensor/rng.js';
export * as ops from './tensor/ops.js';
export { kernels, setKernels, jsKernels } from './kernels/index.js';
// models
export { parseModelConfig, type ModelConfig } from './models/config.js';
export { buildModel, randomWeights, type RawTensor } from './models/build.js';
export { CausalLM, type Batch } from './models/causal-lm.js';
export { RewardModel, pooledRows, rewardPadId } from './models/reward.js';
// PEFT
export { loraConfig, LORA_DEFAULTS, type LoraConfig } from './peft/config.js';
export { applyLora, LoraLinear, selectTargets, setMerged } from './peft/lora.js';
export { loadAdapter, loadRewardAdapter, saveAdapter } from './peft/adapter-io.js';
export { saveMergedModel, mergedStateDict } from './peft/merge.js';
// optimisation and training
export { AdamW, Sgd, clipGradNorm } from './optim/adamw.js';
export { learningRate } from './optim/schedule.js';
export { runTrainer, evaluate, sftObjective, type Loader, type Objective, type TrainerOptions, type TrainResult } from './train/trainer.js';
// generation
export { generate, type GenerateOptions } from './eval/generate.js';
// data
export { Tokenizer } from './data/tokenizer.js';
export { trainBpeTokenizer } from './data/bpe-trainer.js';
export { readRecords } from './data/records.js';
export { tokenizeExample, tokenizeDataset, tokenizePreference } from './data/dataset.js';
export { packSequences, collateRows, BatchLoader, batches } from './data/packing.js';
export { loadBrownText } from './data/brown.js';
// io and evaluation
export { readSafetensors, writeSafetensors, readSafetensorsFolder } from './io/safetensors.js';
export { readGguf, parseGguf, writeGguf, ggufTensorF32, quantizeQ8_0, dequantizeQ8_0, gv, type GgufFile, type GgufValue } from './io/gguf.js';
export { exportGguf, exportGgufVocab, exportLoraGguf, type GgufOutType } from './peft/gguf-export.js';
export { loadModelFolder } from './models/load.js';
export { evaluateFile } from './eval/perplexity.js';
// the training entry point and its config
export { runTraining as train } from './train/run.js';
export { loadTrainConfig, type TrainConfig } from './train/config.js';
export { runSft, type SftConfig } from './train/sft.js';
export { runDpo, dpoObjective, referenceLogProbs, type DpoConfig } from './train/dpo.js';
export { dpoLoss, DPO_LOSS_TYPES, type DpoLossType } from './train/dpo-loss.js';
export { runReward, rewardObjective, evaluateRewards, evaluateRewardFile, type RewardConfig, type RewardResult } from './train/reward.js';
export { rewardLoss } from './train/reward-loss.js';
export { PairLoader, type PairBatch } from './data/pairs.js';
export { resolveModel } from './io/hub.js';
export { estimateMemory } from './train/memory-estimate.js';

/**
 * `quietstar perplexity`: mean next-token NLL of a model on a corpus, and exp of it.
 *
 * Each document (the text file, each JSONL line, each `{"ids": [...]}` line) is its own
 * sequence, cut into windows of T + 1 tokens that overlap by one, so every token after a
 * document's first is predicted exactly once (the `chunk` layout of lib/data); windows never
 * cross documents. Text is tokenised as the tokenizer does for a single sequence (BOS in front
 * for Llama-style tokenizers, nothing for GPT-2), without EOS.
 */
import { readCorpus } from '../data/corpus.js';
import { LmDataset } from '../data/dataset.js';
import { loadPretrained } from '../hf/checkpoint.js';
import { evaluateLm } from '../train/eval.js';
import {
  CORPUS_FLAGS,
  ENGINE_FLAGS,
  ENGINE_HELP,
  UsageError,
  addsBos,
  corpusFlags,
  findTokenizer,
  int,
  openEngine,
  parseFlags,
  required,
  seqLenFor,
  str,
  tokenizerHint,
} from './common.js';

export const PERPLEXITY_HELP = `usage: quietstar perplexity --model DIR --data FILE [options]

Scores FILE with the model in DIR: the mean negative log-likelihood per predicted token (nats)
and the perplexity exp(loss). Every document is its own sequence, cut into windows of --seq-len.

  --model DIR              Hugging Face model folder
  --data FILE              text, JSONL with a text field, or pre-tokenised JSONL lines {"ids": [...]}
                           (auto-detected: .jsonl/.json files are JSONL, anything else is text)
  --format F               text | jsonl | ids, to override the detection
  --field NAME[,NAME...]   JSONL field(s) holding the text (default text; several are joined by a blank line)
  --separator STR          split a text file into documents at STR (e.g. '<|endoftext|>'); default: one document
  --tokenizer FILE         tokenizer (default: the one in --model); not needed for {"ids": [...]} data
  --seq-len T              window length (default: min(the model's maxSeqLen, 1024))
  --batch-size B           windows per forward pass (default 8)
  --json                   print {"loss": ..., "tokens": ..., "perplexity": ...}
${ENGINE_HELP}
`;

const FLAGS = {
  ...ENGINE_FLAGS,
  ...CORPUS_FLAGS,
  model: { type: 'string' },
  'batch-size': { type: 'string' },
  json: { type: 'boolean' },
} as const;

export async function perplexityCommand(argv: string[]): Promise<number> {
  const values = parseFlags(argv, FLAGS);
  if (values.help) {
    process.stdout.write(PERPLEXITY_HELP);
    return 0;
  }
  const modelDir = required(values, 'model');
  const dataFile = required(values, 'data');
  const corpusOptions = corpusFlags(values);
  const batchSize = int(values, 'batch-size', 8, 1);
  const seqLenFlag = int(values, 'seq-len', 0, 1);

  const tok = await findTokenizer(str(values, 'tokenizer'), modelDir);
  using engine = openEngine(values);
  using model = await loadPretrained(engine, modelDir, { optimizer: false });
  const V = model.config.vocabSize;
  const seqLen = seqLenFor(seqLenFlag, model.config.maxSeqLen, 1024);

  const corpus = await readCorpus(dataFile, {
    ...corpusOptions,
    ...(tok ? { tokenizer: tok } : {}),
    vocabSize: V,
    addEos: false,
    addBos: tok !== undefined && addsBos(tok),
  }).catch(tokenizerHint(tok, modelDir));
  const dataset = LmDataset.fromCorpus(corpus, { seqLen, layout: 'chunk', padId: 0 });
  if (dataset.rows === 0) throw new UsageError(`--data ${dataFile}: no document has two or more tokens, nothing to score`);
  const { loss, tokens, perplexity } = await evaluateLm(model, dataset, { batchSize, maxBatches: 0 });
  if (values.json) {
    process.stdout.write(`${JSON.stringify({ loss, tokens, perplexity })}\n`);
  } else {
    process.stdout.write(
      `${dataFile}: ${tokens} predicted tokens in ${corpus.documents.length} documents (${corpus.format}), windows of ${seqLen}\n` +
        `loss ${loss.toFixed(4)} nats/token   perplexity ${perplexity.toFixed(3)}\n`,
    );
  }
  return 0;
}

/** Model shapes used by the benches, as config.json objects. */
export const SHAPES: Record<string, Record<string, unknown>> = {
  smollm2: {
    model_type: 'llama', vocab_size: 49152, hidden_size: 576, intermediate_size: 1536, num_hidden_layers: 30,
    num_attention_heads: 9, num_key_value_heads: 3, rms_norm_eps: 1e-5, rope_theta: 100000, tie_word_embeddings: true,
    max_position_embeddings: 8192,
  },
  tiny: {
    model_type: 'llama', vocab_size: 8192, hidden_size: 256, intermediate_size: 704, num_hidden_layers: 4,
    num_attention_heads: 8, num_key_value_heads: 4, rms_norm_eps: 1e-6, rope_theta: 10000, tie_word_embeddings: false,
    max_position_embeddings: 2048,
  },
};

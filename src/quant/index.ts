/** quant/: NF4 / FP4 block quantization, double quantization, blockwise 8-bit, bitsandbytes format, memory arithmetic. */
export * from './blockwise8.js';
export * from './bnb-format.js';
export * from './dynamic-map.js';
export * from './memory.js';
export * from './nf4.js';
export * from './nf4-gemm.js';

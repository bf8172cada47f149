import { linearCrossEntropy } from '../src/nn/ops/loss.js';
import { backward, noGrad, parameter, scope } from '../src/tensor/autograd.js';
import { Rng } from '../src/tensor/rng.js';
import { Tensor } from '../src/tensor/tensor.js';
const rng = new Rng(1);
const N = 1024, Hd = 576, V = 49152;
const W = Tensor.zeros([V, Hd]); rng.fillNormal(W.f as Float32Array, 0, 0.02);
const h = Tensor.zeros([N, Hd]); rng.fillNormal(h.f as Float32Array, 0, 1);
parameter(h, 'h');
const labels = Int32Array.from({ length: N }, () => rng.int(V));
for (const chunk of (process.argv[2] ?? '170,144,128,192,256,342,512').split(',').map(Number)) {
  const t = [] as number[]; const tb = [] as number[];
  for (let i = 0; i < 3; i++) {
    let s = performance.now();
    noGrad(() => scope(() => linearCrossEntropy(h, W, labels, { chunkTokens: chunk }).item()));
    t.push(performance.now() - s);
    s = performance.now();
    scope(() => { backward(linearCrossEntropy(h, W, labels, { chunkTokens: chunk })); return null; });
    tb.push(performance.now() - s);
    h.grad = null;
  }
  console.log(chunk, 'fwd', Math.min(...t).toFixed(0), 'train', Math.min(...tb).toFixed(0));
}

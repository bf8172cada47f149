// Runs the SFT recipe from a JSON config given as argv[2] (used by the resume test, which SIGKILLs it).
import { runSft } from '../../src/train/sft.js';

const config = JSON.parse(process.argv[2]!);
await runSft(config);
process.stdout.write('done\n');

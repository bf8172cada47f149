/**
 * Module: a named tree of parameters, as in PyTorch. Parameter names are the Hugging Face state-dict
 * names (model.layers.0.self_attn.q_proj.weight), so loading, saving and PEFT wrapping address modules
 * by the same paths users know.
 */
import type { Tensor } from '../tensor/tensor.js';

export abstract class Module {
  /** Direct parameters of this module (null = absent, e.g. no bias). */
  protected params: Record<string, Tensor | null> = {};
  /** Child modules by attribute name (numeric names for lists). */
  protected children: Record<string, Module> = {};
  /** Training mode (dropout on) or evaluation mode. */
  training = false;

  /** Sets training mode on this module and every descendant. */
  train(mode = true): this {
    for (const [, m] of this.namedModules()) m.training = mode;
    return this;
  }

  protected addModule<M extends Module>(name: string, m: M): M {
    this.children[name] = m;
    return m;
  }

  /**
   * Adds a child module after construction (PEFT methods that put new modules next to existing ones, e.g.
   * bottleneck adapters as `model.layers.0.output_adapters`). The name must be new.
   */
  attachModule<M extends Module>(name: string, m: M): M {
    if (this.children[name]) throw new Error(`module already has a child '${name}'`);
    return this.addModule(name, m);
  }

  /** All parameters with their dotted paths. */
  namedParameters(prefix = ''): [string, Tensor][] {
    const out: [string, Tensor][] = [];
    for (const [n, p] of Object.entries(this.params)) if (p) out.push([prefix + n, p]);
    for (const [n, c] of Object.entries(this.children)) out.push(...c.namedParameters(`${prefix}${n}.`));
    return out;
  }

  /** All modules (this one first, with path '') with their dotted paths. */
  namedModules(prefix = ''): [string, Module][] {
    const out: [string, Module][] = [[prefix.replace(/\.$/, ''), this]];
    for (const [n, c] of Object.entries(this.children)) out.push(...c.namedModules(`${prefix}${n}.`));
    return out;
  }

  /** Replaces the module at a dotted path (used by PEFT to wrap Linears). */
  replaceModule(path: string, m: Module): void {
    const parts = path.split('.');
    let parent: Module = this;
    for (const p of parts.slice(0, -1)) {
      const next = parent.children[p];
      if (!next) throw new Error(`no module at '${path}'`);
      parent = next;
    }
    const last = parts[parts.length - 1]!;
    if (!parent.children[last]) throw new Error(`no module at '${path}'`);
    parent.children[last] = m;
    parent.onChildReplaced(last, m);
  }

  getModule(path: string): Module {
    let m: Module = this;
    for (const p of path.split('.')) {
      const next = m.children[p];
      if (!next) throw new Error(`no module at '${path}'`);
      m = next;
    }
    return m;
  }

  /** Replaces the parameter at a dotted path (e.g. a bf16 weight by an f32 copy that will train). */
  replaceParameter(path: string, t: Tensor): void {
    const i = path.lastIndexOf('.');
    const owner = i < 0 ? this : this.getModule(path.slice(0, i));
    const local = path.slice(i + 1);
    if (!(local in owner.params)) throw new Error(`no parameter at '${path}'`);
    owner.params[local] = t;
  }

  /** Subclasses that cache child references update them here. */
  protected onChildReplaced(_name: string, _m: Module): void {}

  /** A child module by name (looked up at call time, so PEFT replacements take effect). */
  protected child<M = Module>(name: string): M {
    const c = this.children[name];
    if (!c) throw new Error(`module has no child '${name}'`);
    return c as unknown as M;
  }

  parameters(): Tensor[] {
    return this.namedParameters().map(([, p]) => p);
  }
}

/** An indexed list of modules (paths 0, 1, 2, ...). */
export class ModuleList<M extends Module = Module> extends Module {
  constructor(items: M[]) {
    super();
    for (const [i, m] of items.entries()) this.addModule(String(i), m);
  }
  at(i: number): M {
    return this.child<M>(String(i));
  }
}

/** Named child modules with no forward of their own (e.g. GPT-2's `attn` holding c_attn and c_proj). */
export class ModuleDict extends Module {
  constructor(items: Record<string, Module>) {
    super();
    for (const [n, m] of Object.entries(items)) this.addModule(n, m);
  }
}

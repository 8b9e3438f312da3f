// How times and sizes read on the dashboard.

export function age(since, now = Date.now()) {
  const s = Math.max(0, Math.floor((now - new Date(since).getTime()) / 1000));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min`;
  const h = Math.floor(m / 60);
  if (h < 24) return `${h} h ${m % 60} min`;
  return `${Math.floor(h / 24)} d ${h % 24} h`;
}

export function when(timestamp) {
  return timestamp ? new Date(timestamp).toLocaleString() : "–";
}

export function mib(bytes) {
  return `${Math.round(bytes / 1048576)} MiB`;
}

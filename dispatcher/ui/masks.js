// CVAT's mask encoding (docs/wire-format.md §4.7): run lengths over the mask's box in row-major order,
// starting with a background run, followed by the inclusive box [left, top, right, bottom].

export function decodeMask(points) {
  const [left, top, right, bottom] = points.slice(-4);
  const width = right - left + 1;
  const height = bottom - top + 1;
  const pixels = new Uint8Array(width * height);
  let offset = 0;
  let value = 0;
  for (const run of points.slice(0, -4)) {
    if (value) pixels.fill(1, offset, offset + run);
    offset += run;
    value = 1 - value;
  }
  return {left, top, width, height, pixels};
}

// An interactor's image-sized H x W reply -> CVAT mask points, or null when it is empty.
export function encodeMask(rows) {
  let left = Infinity, top = Infinity, right = -1, bottom = -1;
  rows.forEach((row, y) => row.forEach((value, x) => {
    if (value) {
      if (x < left) left = x;
      if (x > right) right = x;
      if (y < top) top = y;
      if (y > bottom) bottom = y;
    }
  }));
  if (right < 0) return null;
  const runs = [];
  let value = 0;
  let run = 0;
  for (let y = top; y <= bottom; y++) {
    for (let x = left; x <= right; x++) {
      const on = rows[y][x] ? 1 : 0;
      if (on === value) run++;
      else { runs.push(run); run = 1; value = on; }
    }
  }
  runs.push(run);
  return [...runs, left, top, right, bottom];
}

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { VfioUserClient } from '../../src/client/client.js';
import { createGpioDevice } from '../../src/devices/gpio.js';
import { mediate } from './support.js';

test('a client reads a gpio device through the mediator', async () => {
  const m = await mediate(createGpioDevice().device);
  try {
    const client = await VfioUserClient.connect(m.path);
    const info = await client.deviceInfo();
    assert.ok(info.numRegions > 0);
    const data = await client.regionRead(2, 0n, 1);
    assert.equal(data.length, 1);
    await client.close();
  } finally {
    await m.close();
  }
});
